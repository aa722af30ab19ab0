"""Model architectures. Every model takes raw RGB pixels (0-255, HxWx3) and ends in softmax
probabilities, with its preprocessing (rescaling, resizing) inside the graph, so serving
feeds decoded images as they are and there is no train/serve skew.

- ``airbench``: the default, the fast small-image net of airbench94 (Jordan 2024,
  "94% on CIFAR-10 in 3.29 seconds"): a fixed 2x2 patch-whitening conv computed from the
  training images, three conv groups (conv, pool, BN, SiLU, conv, BN, SiLU) whose 3x3 convs
  start as identities, global max pooling. SiLU rather than airbench's GELU: a smooth
  activation like it, but exportable to ONNX for serving (Keras' exact GELU exports as an
  ``Erfc`` that ONNX Runtime refuses).
- ``mobilenet_v2``: torchvision's MobileNetV2 (``pipelines.models.backbones``) behind a
  resize layer, with ImageNet weights from the package index (``architecture.weights =
  imagenet``, offline) or a local file (``pipelines.models.pretrained``).
- ``mobilenet_v3_small``, ``efficientnet_b0``, ``vgg16``: ``keras.applications`` backbones
  behind a resize layer, with ImageNet weights from Keras' download or a local file.

The last two layers are always a Dense layer named ``logits`` and a softmax named
``probabilities``; head surgery (``pipelines.training.surgery``) relies on that shape.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.policies import ArchitectureConfig
from core.progress import Progress
from pipelines.models import backbones, pretrained

WHITEN_FILTERS = 24  # 2x2x3 patches -> 12 whitened directions and their negatives
# Fixed by design, never trained: whitening set from the data, the input contract
FROZEN_LAYERS = ("whiten", "pixel_contract")
BN_MOMENTUM = 0.8


def _head(features, num_classes: int, dropout: float):
    if dropout:
        features = layers.Dropout(dropout, name="dropout")(features)
    logits = layers.Dense(num_classes, name="logits")(features)
    return layers.Softmax(name="probabilities", dtype="float32")(logits)  # also when mixed


def _conv_group(x, filters: int, name: str):
    """airbench's block: conv, pool, BN, SiLU, conv, BN, SiLU."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, scale=False, name=f"{name}_bn1")(x)
    x = layers.Activation("silu", name=f"{name}_act1")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, scale=False, name=f"{name}_bn2")(x)
    return layers.Activation("silu", name=f"{name}_act2")(x)


def whitening_weights(
    images: np.ndarray, eps: float = 1e-2, sample: int = 5000
) -> list[np.ndarray]:
    """Kernel and bias of a 2x2 conv that whitens the pixel patches of ``images`` (uint8).

    The patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue + eps x the mean
    eigenvalue), and their negatives, as in airbench; the bias centres the patches.
    Statistics come from ``sample`` images spread evenly over ``images`` (which are often
    sorted by class). ``eps`` is 20x airbench's: in JPEG images (4:2:0 chroma) the smallest
    directions hold mostly compression noise, ~1e-4 of the mean variance, which airbench's
    5e-4 would scale up to 0.2-0.3 of the variance of every real direction.
    """
    spread = images[:: max(1, len(images) // sample)][:sample]
    x = spread.astype(np.float32) / 255.0
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)  # (kh, kw, channel) order
    mean = patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
    scaled = eigenvectors / np.sqrt(eigenvalues + eps * eigenvalues.mean())
    kernel = np.concatenate([scaled, -scaled], axis=1)  # (12, 24)
    return [kernel.reshape(2, 2, 3, WHITEN_FILTERS).astype("float32"), -(mean @ kernel)]


def _dirac_init(model: keras.Model) -> None:
    """Start each 3x3 conv as the identity on its first input-many filters (airbench)."""
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.kernel_size == (3, 3):
            kernel = layer.get_weights()[0]
            n = min(kernel.shape[2], kernel.shape[3])
            kernel[:, :, :, :n] = 0.0
            kernel[1, 1, np.arange(n), np.arange(n)] = 1.0
            layer.set_weights([kernel, *layer.get_weights()[1:]])


def airbench(
    spec: ArchitectureConfig, num_classes: int, init_images: np.ndarray | None = None
) -> keras.Model:
    """airbench94's net: a frozen 2x2 whitening conv, three conv groups, global max pool.

    The whitening comes from ``init_images`` (the training images); without them it stays a
    fixed random projection of the patches (tiny test models, shape checks).
    """
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    whiten = layers.Conv2D(WHITEN_FILTERS, 2, padding="valid", name="whiten", trainable=False)
    x = layers.Activation("silu", name="whiten_act")(whiten(x))
    for i, width in enumerate(spec.widths, start=1):
        x = _conv_group(x, width, f"group{i}")
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Rescaling(1 / 9, name="feature_scale")(x)  # small early logits (airbench)
    model = keras.Model(inputs, _head(x, num_classes, spec.dropout), name="airbench")
    if init_images is not None:
        whiten.set_weights(whitening_weights(init_images))
    _dirac_init(model)
    return model


def _vgg_preprocessing(x):
    """VGG16's caffe preprocessing (RGB->BGR, subtract ImageNet means) as a fixed 1x1 conv,
    so the model stays loadable in Keras safe mode (no Lambda)."""
    permute = np.zeros((1, 1, 3, 3), dtype="float32")
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        permute[0, 0, rgb, bgr] = 1.0
    conv = layers.Conv2D(3, 1, name="caffe_preprocess", trainable=False)
    y = conv(x)
    conv.set_weights([permute, -np.array([103.939, 116.779, 123.68], dtype="float32")])
    return y


def _resized(spec: ArchitectureConfig, inputs):
    size = spec.backbone_px()
    if size == spec.input_size:
        return inputs
    return layers.Resizing(size, size, name="resize")(inputs)


def torchvision_model(
    spec: ArchitectureConfig,
    num_classes: int,
    weights_dir: Path | None,
    progress: Progress = print,
) -> keras.Model:
    """torchvision's MobileNetV2 trunk (flat, its layers named after torchvision's modules)
    behind a resize layer, with our head; pretrained weights as ``spec.weights`` says."""
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    features = backbones.mobilenet_v2(_resized(spec, inputs))
    model = keras.Model(inputs, _head(features, num_classes, spec.dropout), name=spec.name)
    if spec.weights:
        pretrained.load_torchvision_weights(model, spec.name, spec.weights, weights_dir, progress)
    return model


def application(spec: ArchitectureConfig, num_classes: int) -> keras.Model:
    """A keras.applications backbone (no top) behind a resize layer, with our head."""
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = _resized(spec, inputs)
    size = spec.backbone_px()
    shape = (size, size, 3)
    weights = pretrained.keras_application_weights(spec.weights)
    try:
        if spec.name == "mobilenet_v3_small":
            backbone = keras.applications.MobileNetV3Small(
                input_shape=shape, include_top=False, weights=weights, include_preprocessing=True
            )
        elif spec.name == "efficientnet_b0":
            backbone = keras.applications.EfficientNetB0(
                input_shape=shape, include_top=False, weights=weights
            )
        else:
            x = _vgg_preprocessing(x)
            backbone = keras.applications.VGG16(
                input_shape=shape, include_top=False, weights=weights
            )
    except Exception as e:  # Keras' get_file raises a bare Exception on a failed fetch
        if weights == "imagenet" and "fetch failure" in str(e):
            raise pretrained.download_errors(spec.name) from e
        raise
    backbone._name = "backbone"
    features = layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    return keras.Model(inputs, _head(features, num_classes, spec.dropout), name=spec.name)


def build_model(
    spec: ArchitectureConfig,
    num_classes: int,
    init_images: np.ndarray | None = None,
    weights_dir: Path | None = None,
    progress: Progress = print,
) -> keras.Model:
    """The model ``spec`` names, with ``num_classes`` softmax outputs; converted pretrained
    weights are cached in ``weights_dir`` (None: converted every time)."""
    if spec.name == "airbench":
        return airbench(spec, num_classes, init_images)
    if spec.name == "mobilenet_v2":
        return torchvision_model(spec, num_classes, weights_dir, progress)
    return application(spec, num_classes)
