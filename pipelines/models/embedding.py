"""A general image embedding for the loop: the ImageNet MobileNetV2's pooled features (1,280
numbers per image) and its 1,000 ImageNet probabilities, through ONNX Runtime.

A champion trained on ten classes sees only what tells those ten apart; an ImageNet trunk
sees what any photo holds. Near-duplicate search, drift and the label queue can use this
embedding where the champion's own features are too narrow. This module runs a built
embedding (no TensorFlow: serving uses it); :mod:`pipelines.models.imagenet` builds it once
per input size from torchvision's weights and keeps its ONNX file in the weights folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.models.engine import OnnxEngine

EMBEDDING_PX = 224  # the size the trunk sees; smaller images are enlarged inside
SHARED = "embeddings"  # in a store: <store>/embeddings/<the ONNX file's name>


class Embedding:
    """``embedding(images)`` -> (N, 1280) float32 features of uint8 images (N, H, W, 3) of
    the size it was built for; ``imagenet(images)`` -> (N, 1000) ImageNet probabilities."""

    def __init__(self, engine: OnnxEngine, input_px: int) -> None:
        self._engine = engine
        self.input_px = input_px

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self._run(images, batch_size)[1]

    def imagenet(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self._run(images, batch_size)[0]

    def _run(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if images.shape[1:] != (self.input_px, self.input_px, 3):
            raise ValueError(
                f"the embedding takes {self.input_px}x{self.input_px} RGB images, "
                f"not {images.shape[1:]}"
            )
        parts = [
            self._engine(images[i : i + batch_size]) for i in range(0, len(images), batch_size)
        ]
        if not parts:
            return np.zeros((0, 1000), np.float32), np.zeros((0, 1280), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def embedding_path(cache_dir: Path, input_px: int = EMBEDDING_PX) -> Path:
    """Where the embedding for ``input_px`` images is kept once built."""
    return cache_dir / f"embedding-mobilenet_v2-imagenet-{input_px}px.onnx"


def load_embedding(cache_dir: Path, input_px: int = EMBEDDING_PX) -> Embedding | None:
    """The built embedding for ``input_px`` images from ``cache_dir``; None if not built."""
    path = embedding_path(cache_dir, input_px)
    return Embedding(OnnxEngine(path.read_bytes()), input_px) if path.is_file() else None


def share_embedding(store, cache_dir: Path, input_px: int = EMBEDDING_PX) -> None:
    """Copy the built embedding to ``store`` (the prediction log's), once, so that serving
    hosts without it find it there (:func:`shared_embedding`)."""
    path = embedding_path(cache_dir, input_px)
    shared = store.path(SHARED, path.name)
    if not store.exists(shared):
        store.write_bytes(shared, path.read_bytes())


def shared_embedding(store, cache_dir: Path, input_px: int = EMBEDDING_PX) -> Embedding | None:
    """The built embedding from ``cache_dir``, else copied there from ``store`` first; None
    when neither has it."""
    path = embedding_path(cache_dir, input_px)
    if not path.is_file():
        data = store.read_bytes(store.path(SHARED, path.name))
        if data is None:
            return None
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return load_embedding(cache_dir, input_px)
