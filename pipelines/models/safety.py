"""Inspect a user's model file before any loader sees it.

A Keras file is a description of layers plus weights. Two things in a description can run
code: a ``Lambda`` layer (Keras 2 ``.h5`` files store its function as marshalled Python
bytecode, which runs when the model is built) and a custom class (code the file expects us
to have imported). Both are refused here, from the raw config (JSON inside the ``.keras`` zip,
an HDF5 attribute of the ``.h5``), so no loader, Keras 3's or tf-keras's, ever builds them.

Every layer must be a standard Keras layer (a class of ``keras.layers``) or a nested
``Sequential``/``Functional`` model made of them.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MODELS = {"Sequential", "Functional", "Model"}
# Layers that carry Python (marshalled bytecode or a TF op called by name).
CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer"}


class ModelRefused(ValueError):
    """A model file cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class FileFacts:
    """What the raw file says about itself, read without building anything."""

    format: str  # "keras" (Keras 3 zip) or "h5"
    keras_version: str  # as the file records it ("" when it does not)
    config: dict  # the model's config

    @property
    def keras2(self) -> bool:
        return self.format == "h5" and self.keras_version.startswith("2.")


@cache
def _standard_layers() -> frozenset[str]:
    import keras

    return frozenset(
        name
        for name in dir(keras.layers)
        if isinstance(getattr(keras.layers, name), type)
        and issubclass(getattr(keras.layers, name), keras.layers.Layer)
    )


def read_facts(path: Path) -> FileFacts:
    """The file's format, Keras version and model config; refuses what is not a model file.

    Raises:
        ModelRefused: not a file Refit accepts (with a hint for SavedModel folders).
    """
    path = Path(path)
    if path.is_dir() or (path.suffix == ".zip" and _is_saved_model_zip(path)):
        raise ModelRefused(
            path,
            "is a TensorFlow SavedModel; Refit imports .keras or .h5 files. Export one from "
            "your training code with model.save('model.keras') (Keras 3) or "
            "model.save('model.h5') (Keras 2 / tf.keras)",
        )
    if not path.is_file():
        raise ModelRefused(path, "no such file")
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelRefused(path, "not a Keras .keras archive (it is not a zip file)")
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise ModelRefused(path, "has no config.json: not a Keras .keras archive")
            config = json.loads(archive.read("config.json"))
            meta = (
                json.loads(archive.read("metadata.json"))
                if "metadata.json" in archive.namelist()
                else {}
            )
        return FileFacts("keras", str(meta.get("keras_version", "")), config)
    if path.suffix == ".h5":
        with open(path, "rb") as handle:
            if handle.read(8) != HDF5_SIGNATURE:
                raise ModelRefused(path, "not an HDF5 file (a pickle or other file renamed .h5?)")
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            version = handle.attrs.get("keras_version", "")
        if raw is None:
            raise ModelRefused(
                path, "holds weights only (no model_config); save the whole model, not weights"
            )
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        version = version.decode() if isinstance(version, bytes) else str(version)
        return FileFacts("h5", version, json.loads(text))
    raise ModelRefused(path, "only .keras and legacy .h5 model files are accepted")


def _is_saved_model_zip(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("saved_model.pb") for name in archive.namelist())


def check_config(path: Path, config: dict) -> None:
    """Refuse Lambda layers and custom classes anywhere in a model config (nested too).

    Raises:
        ModelRefused: naming the layer and why.
    """
    standard = _standard_layers()
    for layer in _layers(config):
        kind, name = layer.get("class_name", "?"), _name(layer)
        if kind in CODE_LAYERS:
            raise ModelRefused(
                path,
                f"layer {name!r} is a {kind}: it carries Python code, which Refit never runs. "
                "Rebuild the model with standard Keras layers and export it again",
            )
        if kind in MODELS:
            continue
        module = str(layer.get("module") or "")
        custom = layer.get("registered_name") not in (None, kind) or (
            module and not module.startswith(("keras", "tf_keras"))
        )
        if custom or kind not in standard:
            raise ModelRefused(
                path,
                f"layer {name!r} is a custom class {layer.get('registered_name') or kind!r}; "
                "Refit loads standard Keras layers only (custom code is never imported)",
            )


def _layers(config: dict):
    """Every layer config in a model config, descending into nested models."""
    inner = config.get("config", {})
    layers = inner.get("layers", []) if isinstance(inner, dict) else inner
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        yield layer
        if layer.get("class_name") in MODELS:
            yield from _layers(layer)


def _name(layer: dict) -> str:
    return str(layer.get("name") or layer.get("config", {}).get("name") or "?")


def inspect(path: Path) -> FileFacts:
    """Read and check a model file's config: the one door before any loader."""
    facts = read_facts(path)
    if facts.config.get("class_name") not in MODELS:
        raise ModelRefused(path, f"holds a {facts.config.get('class_name')!r}, not a Keras model")
    check_config(path, facts.config)
    return facts
