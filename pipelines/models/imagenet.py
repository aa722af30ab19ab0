"""The ImageNet classifier and embedding (:mod:`pipelines.models.embedding`) built from the
packaged torchvision weights (:mod:`pipelines.models.pretrained`): the Keras network, and its
ONNX export kept in the weights folder, so that each host builds it once (seconds).
"""

from __future__ import annotations

from pathlib import Path

from core.progress import Progress
from pipelines.models.embedding import EMBEDDING_PX, Embedding, embedding_path, load_embedding


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


def imagenet_embedding(
    cache_dir: Path, input_px: int = EMBEDDING_PX, progress: Progress = print
) -> Embedding:
    """The embedding for ``input_px`` images: its ONNX file from ``cache_dir``, built there
    on first use (seconds; needs the weights package, see :mod:`pipelines.models.pretrained`).
    """
    path = embedding_path(cache_dir, input_px)
    if not path.is_file():
        from pipelines.models.engine import to_onnx

        progress(f"Building the ImageNet embedding for {input_px} px images (once)")
        data = to_onnx(imagenet_classifier(input_px, cache_dir, progress))
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return load_embedding(cache_dir, input_px)
