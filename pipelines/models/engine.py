"""The serving engine, built where a version is registered (the flow's worker), not where it
is served: the model's frozen inference graph as ONNX, answering probabilities and features
(the input of the ``logits`` layer) from one call, checked against Keras on reference images.

The registry keeps the ONNX file, the check (the largest difference from Keras, or why the
export failed) and Keras' own outputs on the reference images, so a serving replica can load
the engine and verify the file without TensorFlow doing any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from core.contract import FEATURES_LAYER


def with_features(model):
    """The model with two outputs: its probabilities and its features."""
    import keras

    return keras.Model(model.inputs, [model.output, model.get_layer(FEATURES_LAYER).input])


def to_onnx(model) -> bytes:
    """The model as ONNX bytes, from its frozen inference graph (variables as constants, so
    they do not become extra graph inputs)."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")
    both = with_features(model)
    with _quiet("tensorflow", "tf2onnx"):  # their deprecation notes are not for our users
        concrete = tf.function(lambda x: both(x, training=False)).get_concrete_function(spec)
        frozen = convert_variables_to_constants_v2(concrete)
        graph_def = frozen.graph.as_graph_def()
        proto, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=[t.name for t in frozen.inputs],
            output_names=[t.name for t in frozen.outputs],
            opset=17,
        )
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class OnnxEngine:
    """An ONNX Runtime session on the model's ONNX bytes: probabilities and features for
    uint8 images (N, H, W, 3) from one call."""

    name = "onnx"

    def __init__(self, data: bytes, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: beside HTTP work on the same cores,
        # spinning burns the CPU the requests need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, features = self._session.run(None, {self._input: images.astype(np.float32)})
        return probs, features


@dataclass(frozen=True)
class BuiltEngine:
    """What registration stores: the ONNX file (None if the export failed), its check, and
    Keras' probabilities on the reference images."""

    onnx: bytes | None
    check: dict
    expected: np.ndarray


def build(model, reference: np.ndarray) -> BuiltEngine:
    """Export ``model`` to ONNX and measure it against Keras on ``reference`` (uint8)."""
    import tensorflow as tf

    both = with_features(model)
    expected = both(tf.constant(reference, tf.float32), training=False)[0].numpy()
    try:
        data = to_onnx(model)
        probs = OnnxEngine(data)(reference)[0]
    except Exception as exc:  # any export or runtime failure: serving uses Keras, says why
        return BuiltEngine(None, {"error": f"ONNX export failed: {exc}"[:2000]}, expected)
    check = {
        "max_abs_diff": float(np.abs(probs - expected).max()),
        "images": len(reference),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return BuiltEngine(data, check, expected)
