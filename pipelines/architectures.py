"""Model architectures. Every model takes raw RGB pixels (0-255, HxWx3) and ends in softmax
probabilities, with its preprocessing (rescaling, resizing) inside the graph, so serving
feeds decoded images as they are and there is no train/serve skew.

- ``residual_cnn``: the default, a fast ResNet-9-style net for small images
  (conv-BN-ReLU blocks, two residual stages, global max pooling).
- ``mobilenet_v3_small``, ``efficientnet_b0``, ``vgg16``: ``keras.applications`` backbones
  behind a resize layer, with optional pretrained weights from a local file (never a
  download).

The last two layers are always a Dense layer named ``logits`` and a softmax named
``probabilities``; head surgery (``pipelines.surgery``) relies on that shape.
"""

from __future__ import annotations

import keras
from keras import layers

from pipelines.config import ArchitectureConfig

ARCHITECTURES = ("residual_cnn", "mobilenet_v3_small", "efficientnet_b0", "vgg16")


def _conv_bn(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual(x, filters: int, name: str):
    y = _conv_bn(x, filters, f"{name}_a")
    y = _conv_bn(y, filters, f"{name}_b")
    return layers.Add(name=f"{name}_add")([x, y])


def _head(features, num_classes: int, dropout: float):
    if dropout:
        features = layers.Dropout(dropout, name="dropout")(features)
    logits = layers.Dense(num_classes, name="logits")(features)
    return layers.Softmax(name="probabilities")(logits)


def residual_cnn(spec: ArchitectureConfig, num_classes: int) -> keras.Model:
    """ResNet-9 style: prep, [conv, pool, residual], [conv, pool], [conv, pool, residual]."""
    w1, w2, w3 = spec.widths
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _conv_bn(x, w1, "prep")
    x = _conv_bn(x, w1, "stage1")
    x = layers.MaxPooling2D(name="stage1_pool")(x)
    x = _residual(x, w1, "stage1_res")
    x = _conv_bn(x, w2, "stage2")
    x = layers.MaxPooling2D(name="stage2_pool")(x)
    x = _conv_bn(x, w3, "stage3")
    x = layers.MaxPooling2D(name="stage3_pool")(x)
    x = _residual(x, w3, "stage3_res")
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Rescaling(0.125, name="feature_scale")(x)  # keeps early logits small (ResNet-9)
    return keras.Model(inputs, _head(x, num_classes, spec.dropout), name="residual_cnn")


def _vgg_preprocessing(x):
    """VGG16's caffe preprocessing (RGB->BGR, subtract ImageNet means) as a fixed 1x1 conv,
    so the model stays loadable in Keras safe mode (no Lambda)."""
    import numpy as np

    permute = np.zeros((1, 1, 3, 3), dtype="float32")
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        permute[0, 0, rgb, bgr] = 1.0
    conv = layers.Conv2D(3, 1, name="caffe_preprocess", trainable=False)
    y = conv(x)
    conv.set_weights([permute, -np.array([103.939, 116.779, 123.68], dtype="float32")])
    return y


def application(spec: ArchitectureConfig, num_classes: int) -> keras.Model:
    """A keras.applications backbone (no top) behind a resize layer, with our head."""
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = layers.Resizing(spec.backbone_size, spec.backbone_size, name="resize")(inputs)
    shape = (spec.backbone_size, spec.backbone_size, 3)
    weights = spec.weights
    if spec.name == "mobilenet_v3_small":
        backbone = keras.applications.MobileNetV3Small(
            input_shape=shape, include_top=False, weights=weights, include_preprocessing=True
        )
    elif spec.name == "efficientnet_b0":
        backbone = keras.applications.EfficientNetB0(
            input_shape=shape, include_top=False, weights=weights
        )
    elif spec.name == "vgg16":
        x = _vgg_preprocessing(x)
        backbone = keras.applications.VGG16(input_shape=shape, include_top=False, weights=weights)
    else:
        raise ValueError(f"unknown architecture {spec.name!r}; choose one of {ARCHITECTURES}")
    backbone._name = "backbone"
    features = layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    return keras.Model(inputs, _head(features, num_classes, spec.dropout), name=spec.name)


def build_model(spec: ArchitectureConfig, num_classes: int) -> keras.Model:
    """The model ``spec`` names, with ``num_classes`` softmax outputs."""
    if spec.name == "residual_cnn":
        return residual_cnn(spec, num_classes)
    return application(spec, num_classes)
