"""Users' models rebuilt as one flat Keras 3 functional graph.

Refit edits models by layer name (the ``logits`` head, the ``pixel_contract`` input layer,
the top layers it unfreezes), so every model it keeps is one flat graph. :func:`flatten`
replays a Keras 3 model's layers (nested Sequential/Functional models inlined) on new
inputs as fresh layers with the same weights, optionally behind a front layer.

Keras 2 ``.h5`` files (tf.keras 2.x, Teachable Machine): Keras 3's own h5 loader stops at
Keras 2 details (``DepthwiseConv2D(groups=1)``, nested Sequential models, tf-keras module
paths), so the file is loaded by ``tf-keras`` (Keras 2), then rebuilt layer by layer as
Keras 3 layers with the same weights (:func:`load_keras2`), so the result trains, serves and
exports like Refit's own. The rebuild is checked against the original on the same input.

Only call these on a file :func:`pipelines.models.safety.inspect` has passed: tf-keras builds
whatever the file describes.
"""

from __future__ import annotations

import inspect as pyinspect
import json
from pathlib import Path

import keras
import numpy as np

from pipelines.images import pixels
from pipelines.images.pixels import PixelContract
from pipelines.models.safety import ModelRefused

# Keras 2 arguments Keras 3 does not take, dropped when they hold the value that means
# "as Keras 3 does anyway".
_HARMLESS = {("DepthwiseConv2D", "groups"): 1}
_SHAPE_KEYS = {"batch_input_shape", "input_shape", "input_dim", "batch_size"}
_BASE_KEYS = {"name", "trainable", "dtype", "activity_regularizer"}
MAX_ABS_DIFF = 1e-4


def load_keras2(path: Path) -> keras.Model:
    """Load a Keras 2 ``.h5`` with tf-keras and return the equivalent Keras 3 model."""
    import tf_keras

    class DepthwiseConv2D(tf_keras.layers.DepthwiseConv2D):
        """Teachable Machine's Keras 2.4 wrote ``groups: 1``, which DepthwiseConv2D may reject."""

        def __init__(self, *args, groups=1, **kwargs):
            super().__init__(*args, **kwargs)

    try:
        old = tf_keras.models.load_model(
            path, compile=False, custom_objects={"DepthwiseConv2D": DepthwiseConv2D}
        )
    except Exception as exc:  # tf-keras raises many kinds; the first line says which
        raise ModelRefused(path, f"tf-keras cannot load it: {_first_line(exc)}") from exc
    model = convert(old, path)
    if None in tuple(old.input_shape[1:]):
        raise ModelRefused(path, "must declare its input height and width")
    probe = np.random.default_rng(0).uniform(0, 1, (2, *old.input_shape[1:])).astype("float32")
    diff = float(np.max(np.abs(np.asarray(old(probe, training=False)) - np.asarray(model(probe)))))
    if not diff <= MAX_ABS_DIFF:
        raise ModelRefused(path, f"the Keras 3 rebuild differs from the file's model by {diff:g}")
    return model


def convert(old, path: Path) -> keras.Model:
    """A flat Keras 3 functional model computing what the tf-keras model ``old`` computes."""
    if len(old.inputs) != 1:
        raise ModelRefused(path, "must have exactly one input")
    inputs = keras.Input(shape=tuple(old.input_shape[1:]), name="image")
    converter = _Converter(path)
    outputs = converter.call(old, [inputs])
    return keras.Model(inputs, outputs, name=old.name)


class _Converter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.copies = _Copies()

    def call(self, model, inputs: list) -> list:
        """Apply the tf-keras model ``model`` to Keras 3 tensors ``inputs``."""
        import tf_keras

        if isinstance(model, tf_keras.Sequential):
            x = inputs[0]
            for layer in model.layers:
                (x,) = self.apply(layer, [x])
            return [x]
        config = model.get_config()
        tensors = {
            (name, node, index): tensor
            for (name, node, index), tensor in zip(config["input_layers"], inputs, strict=True)
        }
        for spec in config["layers"]:
            if spec["class_name"] == "InputLayer":
                continue
            layer = model.get_layer(spec["name"])
            for node_index, node in enumerate(spec["inbound_nodes"]):
                args = []
                for inbound in node:
                    name, at, index, kwargs = (*inbound, {})[:4]
                    extra = set(kwargs) - {"training"}
                    if extra:
                        raise ModelRefused(
                            self.path, f"layer {spec['name']!r} is called with {sorted(extra)}"
                        )
                    args.append(tensors[(name, at, index)])
                for index, out in enumerate(self.apply(layer, args)):
                    tensors[(spec["name"], node_index, index)] = out
        return [tensors[tuple(out[:3])] for out in config["output_layers"]]

    def apply(self, layer, args: list) -> list:
        import tf_keras

        if isinstance(layer, tf_keras.Model):
            return self.call(layer, args)
        one = args[0] if len(args) == 1 else args  # Keras 2 lists a merge layer's inputs
        return _copy_call(layer, [one], {}, self.copies, self.rebuild)

    def rebuild(self, layer) -> keras.layers.Layer:
        kind = type(layer).__name__
        cls = getattr(keras.layers, kind, None)
        if cls is None:
            raise ModelRefused(self.path, f"layer {layer.name!r}: Keras 3 has no {kind}")
        config = json.loads(json.dumps(layer.get_config(), default=_plain))
        if kind == "BatchNormalization" and isinstance(config.get("axis"), list):
            if len(config["axis"]) != 1:
                raise ModelRefused(
                    self.path,
                    f"layer {layer.name!r}: BatchNormalization over several axes {config['axis']}",
                )
            config["axis"] = config["axis"][0]
        accepted = set(pyinspect.signature(cls.__init__).parameters) | _BASE_KEYS
        for key in list(config):
            if key in _SHAPE_KEYS:
                config.pop(key)
            elif key not in accepted:
                value = config.pop(key)
                if _HARMLESS.get((kind, key), object()) != value:
                    raise ModelRefused(
                        self.path,
                        f"layer {layer.name!r}: Keras 3's {kind} has no argument {key}={value!r}",
                    )
        if isinstance(config.get("dtype"), dict):  # a Keras 2 Policy
            config["dtype"] = config["dtype"].get("config", {}).get("name", "float32")
        config["name"] = self.copies.unique(config.get("name", kind))
        try:
            return cls.from_config(config)
        except Exception as exc:
            raise ModelRefused(
                self.path, f"layer {layer.name!r} ({kind}): {_first_line(exc)}"
            ) from exc


def flatten(model: keras.Model, front: keras.layers.Layer | None = None) -> keras.Model:
    """``model`` as one flat functional graph of fresh layers with the same weights,
    optionally with ``front`` applied first."""
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="pixels" if front else "image")
    (out,) = _replay(model, [front(inputs) if front else inputs], _Copies())
    return keras.Model(inputs, out, name=model.name)


class _Copies(dict):
    """Fresh layers by the id of the layer they copy (a shared layer stays shared), and the
    names given so far: nested models may reuse a name, one flat model may not."""

    def __init__(self) -> None:
        super().__init__()
        self.names = {"image", "pixels", "pixel_contract"}

    def unique(self, name: str) -> str:
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name


def _fresh_copy(layer: keras.layers.Layer, copies: _Copies) -> keras.layers.Layer:
    config = layer.get_config()
    config["name"] = copies.unique(config["name"])
    return type(layer).from_config(config)


def _copy_call(layer, args: list, kwargs: dict, copies: _Copies, make=None) -> list:
    """Call the fresh copy of ``layer`` (made by ``make``, default: from its config) and give
    it ``layer``'s weights the first time it is built."""
    fresh = id(layer) not in copies
    if fresh:
        copies[id(layer)] = make(layer) if make else _fresh_copy(layer, copies)
    out = copies[id(layer)](*args, **kwargs)
    if fresh:
        copies[id(layer)].set_weights(layer.get_weights())
    return list(out) if isinstance(out, list | tuple) else [out]


def _replay(model: keras.Model, inputs: list, copies: _Copies) -> list:
    if isinstance(model, keras.Sequential):
        x = inputs[0]
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                (x,) = _replay(layer, [x], copies)
            else:
                (x,) = _copy_call(layer, [x], {}, copies)
        return [x]
    config = model.get_config()
    if "layers" not in config:
        raise ModelRefused(model.name, "is a subclassed model; export a functional one")
    starts = config["input_layers"]
    starts = [starts] if starts and isinstance(starts[0], str) else starts
    tensors = {tuple(key): tensor for key, tensor in zip(starts, inputs, strict=True)}

    def resolve(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return tensors[tuple(value["config"]["keras_history"])]
        if isinstance(value, list | tuple):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    for spec in config["layers"]:
        if spec["class_name"] == "InputLayer":
            continue
        layer = model.get_layer(spec["name"])
        for node_index, node in enumerate(spec["inbound_nodes"]):
            args = resolve(node["args"])
            kwargs = {k: v for k, v in resolve(node["kwargs"]).items() if v is not None}
            kwargs.pop("training", None)
            if isinstance(layer, keras.Model):
                outs = _replay(layer, args[0] if isinstance(args[0], list) else args, copies)
            else:
                outs = _copy_call(layer, args, kwargs, copies)
            for index, tensor in enumerate(outs):
                tensors[(spec["name"], node_index, index)] = tensor
    ends = config["output_layers"]
    ends = [ends] if ends and isinstance(ends[0], str) else ends
    return [tensors[tuple(key)] for key in ends]


def _plain(value):
    """JSON for what tf-keras configs hold besides JSON: ListWrapper, numpy scalars."""
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def wrap_contract(model, contract: PixelContract):
    """``model`` behind a fixed ``pixel_contract`` layer: it then takes raw 0-255 RGB."""
    if contract.identity:
        return model
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out in range(3):
        source = 2 - out if contract.bgr else out
        kernel[0, 0, source, out] = contract.scale[out]
    layer = keras.layers.Conv2D(3, 1, name=pixels.LAYER, trainable=False)
    wrapped = flatten(model, front=layer)
    layer.set_weights([kernel, np.asarray(contract.offset, np.float32)])
    return wrapped
