"""Model files: save and load a model with its class names; import a user's model safely.

A Refit model file is a normal Keras ``.keras`` archive with one extra member,
``refit.json`` (class names and a small model card), so any Keras can load it and the class
names never travel separately. ``.h5`` exports carry the class names as an HDF5 attribute.

Models from users are untrusted: they are loaded with ``safe_mode=True`` and
``compile=False``; Lambda layers and unknown custom objects are refused; the file must be
what its name says (a zip for ``.keras``, HDF5 for ``.h5``: a pickle renamed ``.h5`` is
refused before Keras sees it); the model must take an HxWx3 image and end in as many
softmax outputs as the class names given.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from pipelines.names import RULE, is_valid

META_MEMBER = "refit.json"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ModelRefused(ValueError):
    """A model file cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class LoadedModel:
    """A Keras model with the class names of its outputs (index i is class_names[i])."""

    model: keras.Model
    class_names: list[str]
    card: dict = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        _, height, width, _ = self.model.input_shape
        return height, width


def save_model(loaded: LoadedModel, path: Path) -> Path:
    """Write ``loaded`` as a ``.keras`` (class names inside) or ``.h5`` (as an attribute)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stripped = _without_optimizer(loaded.model)
    meta = {"class_names": loaded.class_names, "card": loaded.card}
    if path.suffix == ".h5":
        import h5py

        stripped.save(path)
        with h5py.File(path, "a") as handle:
            handle.attrs["refit"] = json.dumps(meta)
        return path
    if path.suffix != ".keras":
        raise ValueError(f"{path}: model files end in .keras or .h5")
    stripped.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(META_MEMBER, json.dumps(meta, indent=2))
    return path


def _without_optimizer(model: keras.Model) -> keras.Model:
    """An uncompiled copy: model files hold weights, not optimizer state."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = type(model).from_config(model.get_config())  # clone_model would keep the optimizer
    copy.set_weights(model.get_weights())
    return copy


def read_meta(path: Path) -> dict | None:
    """The Refit metadata (class names, card) stored in a model file, or None."""
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if META_MEMBER in archive.namelist():
                return json.loads(archive.read(META_MEMBER))
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as handle:
            if "refit" in handle.attrs:
                return json.loads(handle.attrs["refit"])
    return None


def read_class_names(path: Path) -> list[str] | None:
    """The class names stored in a Refit model file, or None if it has none."""
    meta = read_meta(path)
    return meta["class_names"] if meta else None


def _check_container(path: Path) -> None:
    if not path.is_file():
        raise ModelRefused(path, "no such file")
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelRefused(path, "not a Keras .keras archive (it is not a zip file)")
    elif path.suffix == ".h5":
        with open(path, "rb") as handle:
            if handle.read(8) != HDF5_SIGNATURE:
                raise ModelRefused(path, "not an HDF5 file (a pickle or other file renamed .h5?)")
    else:
        raise ModelRefused(path, "only .keras and legacy .h5 model files are accepted")


def _load_untrusted(path: Path) -> keras.Model:
    _check_container(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        text = str(exc)
        if "lambda" in text.lower() or "safe_mode" in text:
            raise ModelRefused(
                path,
                "contains a Lambda layer (arbitrary code); refused in "
                "safe mode - rebuild it with standard layers",
            ) from exc
        if "Unknown" in text or "custom" in text.lower():
            raise ModelRefused(
                path, f"uses custom objects Refit cannot load safely: {text.splitlines()[0]}"
            ) from exc
        raise ModelRefused(
            path, f"cannot be loaded: {text.splitlines()[0] if text else exc}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise ModelRefused(path, "does not hold a Keras model")
    lambdas = [layer.name for layer in _all_layers(model) if isinstance(layer, keras.layers.Lambda)]
    if lambdas:
        raise ModelRefused(path, f"contains Lambda layers {lambdas}; refused")
    return model


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def check_class_names(class_names: list[str], existing: list[str] | None = None) -> list[str]:
    """Clean and check class names: non-empty, unique, existing classes kept in order."""
    names = [str(n).strip() for n in class_names]
    if not names or any(not n for n in names):
        raise ValueError("class names must be non-empty")
    unsafe = [n for n in names if not is_valid(n)]
    if unsafe:
        raise ValueError(f"class names must be {RULE}: {unsafe}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names: {duplicates}")
    if existing and names[: len(existing)] != list(existing):
        raise ValueError(
            f"the class list must start with the existing classes in their order {existing} "
            f"(outputs cannot be reordered), got {names}"
        )
    return names


def _normalise_head(model: keras.Model, path: Path) -> keras.Model:
    """Make the model end in Dense ``logits`` -> Softmax ``probabilities`` (same function)."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax) and isinstance(model.layers[-2], keras.layers.Dense):
        dense = model.layers[-2]
        if dense.get_config()["activation"] == "linear":
            return model
    if isinstance(last, keras.layers.Dense) and last.get_config()["activation"] == "softmax":
        dense = last
    else:
        raise ModelRefused(
            path,
            f"must end in a softmax layer; its last layer is {type(last).__name__} {last.name!r}",
        )
    features = dense.input
    logits = keras.layers.Dense(dense.units, name="logits")(features)
    outputs = keras.layers.Softmax(name="probabilities")(logits)
    rebuilt = keras.Model(model.inputs, outputs, name=model.name)
    rebuilt.get_layer("logits").set_weights(dense.get_weights())
    return rebuilt


def import_model(
    path: Path, class_names: list[str], existing: list[str] | None = None
) -> LoadedModel:
    """Load a user's ``.keras``/``.h5`` classifier safely and check it fits Refit.

    Args:
        path: the user's model file.
        class_names: the name of each output, in output order.
        existing: classes the current champion has; they must keep their indices.

    Raises:
        ModelRefused: the file or the model is unusable; the message says why.
    """
    path = Path(path)
    try:
        names = check_class_names(class_names, existing)
    except ValueError as exc:
        raise ModelRefused(path, str(exc)) from exc
    model = _load_untrusted(path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelRefused(path, "must have exactly one input and one output")
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ModelRefused(path, f"must take a batch of HxWx3 images; its input shape is {shape}")
    if shape[-1] != 3:
        raise ModelRefused(
            path,
            f"must take RGB images (3 channels); its input has {shape[-1]}"
            " (grayscale models are not supported)",
        )
    if shape[1] is None or shape[2] is None:
        raise ModelRefused(path, "must declare its input height and width")
    model = _normalise_head(model, path)
    units = model.output_shape[-1]
    if units != len(names):
        raise ModelRefused(path, f"has {units} outputs but {len(names)} class names were given")
    probe = np.zeros((1, *shape[1:]), dtype="float32")
    if not np.isfinite(np.asarray(model(probe, training=False))).all():
        raise ModelRefused(path, "produces non-finite outputs")
    return LoadedModel(model, names, {"imported_from": path.name})


def load_refit_model(path: Path) -> LoadedModel:
    """Load a Refit model file (ours: trusted format, still loaded in safe mode)."""
    meta = read_meta(path)
    if meta is None:
        raise ModelRefused(path, "has no class names; import it with `refit model import`")
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return LoadedModel(model, meta["class_names"], meta.get("card", {}))


def model_card_markdown(loaded: LoadedModel, title: str) -> str:
    """A readable model card from the card dict a recipe filled in."""
    card = loaded.card
    lines = [
        f"# {title}",
        "",
        f"Classes ({len(loaded.class_names)}, in output order): "
        + ", ".join(f"`{c}`" for c in loaded.class_names),
        "",
    ]
    for key, value in card.items():
        if isinstance(value, dict):
            lines.append(f"## {key}")
            lines += [f"- {k}: {v}" for k, v in value.items()]
            lines.append("")
        else:
            lines.append(f"- **{key}**: {value}")
    return "\n".join(lines) + "\n"
