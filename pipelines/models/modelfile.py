"""Model files: save and load a model with its class names; import a user's model safely.

A Refit model file is a normal Keras ``.keras`` archive with one extra member,
``refit.json`` (class names and a small model card), so any Keras can load it and the class
names never travel separately. ``.h5`` exports carry the class names as an HDF5 attribute.

Models from users are untrusted: their config is inspected before any loader runs
(``pipelines.models.safety``: no Lambda, no custom class, the file is what its name says);
Keras 3 files load with ``safe_mode=True`` and ``compile=False``, Keras 2 ``.h5`` files
through tf-keras into a Keras 3 rebuild (``pipelines.models.rebuild``). The model must take an
HxWx3 image and end in as many softmax outputs as the class names given; the pixels it
expects are wrapped into its graph (``pipelines.images.pixels``).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from pipelines.images import pixels
from pipelines.images.names import RULE, is_valid
from pipelines.models import safety
from pipelines.models.rebuild import flatten, load_keras2, wrap_contract
from pipelines.models.safety import ModelRefused

META_MEMBER = "refit.json"
__all__ = [
    "LoadedModel",
    "ModelRefused",
    "import_model",
    "load_refit_model",
    "save_model",
    "with_contract",
]


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


def _load_untrusted(path: Path, facts: safety.FileFacts) -> keras.Model:
    """Load a file whose config :func:`safety.inspect` passed, in Keras 3 form."""
    if facts.keras2:
        return load_keras2(path)  # already flat
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        text = str(exc).strip()
        raise ModelRefused(
            path, f"cannot be loaded: {text.splitlines()[0][:300] if text else exc}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise ModelRefused(path, "does not hold a Keras model")
    try:  # Lambda and custom layers were refused from the config, before loading
        return flatten(model)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelRefused(path, f"cannot be rebuilt as one Keras graph: {exc}") from exc


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
    weights = dense.get_weights()
    if len(weights) == 1:  # Teachable Machine's head has no bias
        weights.append(np.zeros(dense.units, dtype=weights[0].dtype))
    rebuilt.get_layer("logits").set_weights(weights)
    return rebuilt


def import_model(
    path: Path,
    class_names: list[str],
    existing: list[str] | None = None,
    contract: pixels.PixelContract | None = None,
) -> LoadedModel:
    """Load a user's ``.keras``/``.h5`` classifier safely and make it a Refit model.

    Args:
        path: the user's model file.
        class_names: the name of each output, in output order.
        existing: classes the current champion has; they must keep their indices.
        contract: the pixels the model expects (default 0-255), wrapped into its graph.

    Raises:
        ModelRefused: the file or the model is unusable; the message says why.
    """
    path = Path(path)
    try:
        names = check_class_names(class_names, existing)
    except ValueError as exc:
        raise ModelRefused(path, str(exc)) from exc
    facts = safety.inspect(path)
    model = bare_model(path, facts)
    units = model.output_shape[-1]
    if units != len(names):
        raise ModelRefused(
            path, f"has {units} outputs but {len(names)} class names were given ({names})"
        )
    card = {
        "imported_from": path.name,
        "format": f"{facts.format} (Keras {facts.keras_version or '?'})",
        "has_batch_norm": any(isinstance(x, keras.layers.BatchNormalization) for x in model.layers),
    }
    return with_contract(LoadedModel(model, names, card), contract or pixels.parse("0-255"))


def with_contract(bare: LoadedModel, contract: pixels.PixelContract) -> LoadedModel:
    """An imported model (pixels as its file had them) behind the input ``contract``."""
    model = wrap_contract(bare.model, contract)
    probe = np.full((1, *model.input_shape[1:]), 127.0, dtype="float32")
    if not np.isfinite(np.asarray(model(probe, training=False))).all():
        raise ModelRefused(bare.card.get("imported_from", "model"), "produces non-finite outputs")
    return LoadedModel(model, bare.class_names, {**bare.card, "pixels": contract.name})


def bare_model(path: Path, facts: safety.FileFacts | None = None) -> keras.Model:
    """The user's model as Keras 3, checked (one HxWx3 input, softmax head), pixels as is."""
    facts = facts or safety.inspect(path)
    model = _load_untrusted(path, facts)
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
    return _normalise_head(model, path)


def read_class_list(path: Path) -> tuple[list[str], bool]:
    """Class names from a file, and whether it is numbered: one name per line (names may
    hold commas), or ``labels.txt`` as Teachable Machine writes it (``0 cardboard``: each
    line starts with its index).

    Raises:
        ModelRefused: unreadable, empty, or a numbered list out of order.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelRefused(path, f"cannot read the class list: {exc}") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ModelRefused(path, "the class list is empty")
    numbered = [line.split(maxsplit=1) for line in lines]
    if all(len(p) == 2 and p[0].isdigit() for p in numbered):
        indices = [int(p[0]) for p in numbered]
        if indices != list(range(len(lines))):
            raise ModelRefused(path, f"numbered class list out of order: {indices}")
        return [p[1].strip() for p in numbered], True
    return lines, False


def load_refit_model(path: Path) -> LoadedModel:
    """Load a Refit model file (ours: trusted format, still loaded in safe mode)."""
    safety.inspect(path)  # a file passed to `refit model register` may be anyone's
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
