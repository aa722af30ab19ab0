"""A general image embedding for the loop: the ImageNet MobileNetV2's pooled features (1,280
numbers per image) and its 1,000 ImageNet probabilities, through ONNX Runtime.

A champion trained on ten classes sees only what tells those ten apart; an ImageNet trunk
sees what any photo holds. Near-duplicate search, drift and the label queue can use this
embedding where the champion's own features are too narrow. The network is built once per
input size (torchvision's weights, :mod:`pipelines.models.pretrained`), exported to ONNX and
cached beside the converted weights; afterwards no TensorFlow work is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.progress import Progress
from pipelines.models.engine import OnnxEngine

EMBEDDING_PX = 224  # the size the trunk sees; smaller images are enlarged inside


def imagenet_classifier(input_px: int, cache_dir: Path | None, progress: Progress = print):
    """torchvision's MobileNetV2 with its ImageNet classifier, as a Keras model on
    ``input_px`` images (0-255 RGB), resized inside to 224."""
    import keras

    from pipelines.models import backbones, pretrained
    from pipelines.models.torchweights import read_state_dict

    inputs = keras.Input((input_px, input_px, 3), name="image")
    x = inputs
    if input_px != EMBEDDING_PX:
        x = keras.layers.Resizing(EMBEDDING_PX, EMBEDDING_PX, name="resize")(x)
    logits = keras.layers.Dense(1000, name="logits")(backbones.mobilenet_v2(x))
    model = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))
    pretrained.load_torchvision_weights(model, "mobilenet_v2", "imagenet", cache_dir, progress)
    state = read_state_dict(pretrained.IMAGENET_PACKAGES["mobilenet_v2"].path())
    model.get_layer("logits").set_weights(
        [state["classifier.1.weight"].T, state["classifier.1.bias"]]
    )
    return model


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


def imagenet_embedding(
    cache_dir: Path, input_px: int = EMBEDDING_PX, progress: Progress = print
) -> Embedding:
    """The embedding for ``input_px`` images: its ONNX file from ``cache_dir``, built there
    on first use (seconds; needs the weights package, see :mod:`pipelines.models.pretrained`).
    """
    path = cache_dir / f"embedding-mobilenet_v2-imagenet-{input_px}px.onnx"
    if not path.is_file():
        from pipelines.models.engine import to_onnx

        progress(f"Building the ImageNet embedding for {input_px} px images (once)")
        data = to_onnx(imagenet_classifier(input_px, cache_dir, progress))
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return Embedding(OnnxEngine(path.read_bytes()), input_px)
