"""Pretrained trunks built layer for layer in Keras, to take published PyTorch weights.

``mobilenet_v2``: torchvision's MobileNetV2 (Sandler et al. 2018), which is not
``keras.applications.MobileNetV2``: its 3x3 convolutions pad one pixel on every side (Keras'
``same`` pads (0, 1) before a stride-2 convolution), its batch norm epsilon is 1e-5 (Keras
1e-3), and it expects RGB / 255 normalised by ImageNet's mean and standard deviation. The
trunk is built flat into the caller's graph (no nested model), so fine-tuning can unfreeze its
top layers one by one; each weight layer is named after its PyTorch module
(``features.17.conv.2`` -> ``features_17_conv_2``).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
BN_EPSILON = 1e-5
# torchvision's inverted residual settings: expansion t, channels c, repeats n, stride s
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
MOBILENET_V2_FEATURES = 1280
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")  # Keras' order


def _name(prefix: str) -> str:
    return prefix.replace(".", "_")


def _conv_bn(x, filters: int, kernel: int, stride: int, prefix: str, *, depthwise=False, relu=True):
    """A torchvision Conv2dNormActivation (or a conv + BN without activation): the conv is
    ``{prefix}.0`` and the batch norm ``{prefix}.1``."""
    if kernel == 3:
        x = layers.ZeroPadding2D(1, name=_name(prefix) + "_pad")(x)
    if depthwise:
        x = layers.DepthwiseConv2D(3, stride, use_bias=False, name=_name(prefix + ".0"))(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, use_bias=False, name=_name(prefix + ".0"))(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=_name(prefix + ".1"))(x)
    return layers.ReLU(6.0, name=_name(prefix) + "_relu6")(x) if relu else x


def _inverted_residual(x, expand: int, filters: int, stride: int, index: int):
    prefix = f"features.{index}.conv"
    channels = x.shape[-1]
    y, part = x, 0
    if expand != 1:
        y = _conv_bn(y, channels * expand, 1, 1, f"{prefix}.{part}")
        part += 1
    y = _conv_bn(y, 0, 3, stride, f"{prefix}.{part}", depthwise=True)
    # the linear bottleneck: conv {part+1}, batch norm {part+2}
    y = layers.Conv2D(filters, 1, use_bias=False, name=_name(f"{prefix}.{part + 1}"))(y)
    y = layers.BatchNormalization(epsilon=BN_EPSILON, name=_name(f"{prefix}.{part + 2}"))(y)
    if stride == 1 and channels == filters:
        y = layers.Add(name=f"features_{index}_add")([x, y])
    return y


def mobilenet_v2(pixels):
    """torchvision's MobileNetV2 trunk on ``pixels`` (RGB, 0-255, any square size): the
    pooled 1280 features, as layer ``pool``."""
    x = layers.Normalization(
        mean=IMAGENET_MEAN, variance=IMAGENET_STD**2, name="imagenet_normalize"
    )(pixels)
    x = _conv_bn(x, 32, 3, 2, "features.0")
    index = 1
    for expand, filters, repeats, stride in MOBILENET_V2_BLOCKS:
        for i in range(repeats):
            x = _inverted_residual(x, expand, filters, stride if i == 0 else 1, index)
            index += 1
    x = _conv_bn(x, MOBILENET_V2_FEATURES, 1, 1, f"features.{index}")
    return layers.GlobalAveragePooling2D(name="pool")(x)


def from_torchvision(model: keras.Model, state: dict[str, np.ndarray]) -> dict[str, list]:
    """The weights of ``model``'s layers named after torchvision modules, converted from
    ``state`` to Keras' layouts (the classifier's are not used: the head is ours).

    Raises:
        ValueError: a layer has no weights in ``state``, or their shapes differ.
    """

    def tensor(key: str) -> np.ndarray:
        if key not in state:
            raise ValueError(f"the weights have no tensor {key}")
        return state[key]

    converted = {}
    for layer in model.layers:
        prefix = layer.name.replace("_", ".")
        if isinstance(layer, layers.DepthwiseConv2D):
            weights = [tensor(prefix + ".weight").transpose(2, 3, 0, 1)]  # (c, 1, kh, kw)
        elif isinstance(layer, layers.Conv2D):
            weights = [tensor(prefix + ".weight").transpose(2, 3, 1, 0)]  # (out, in, kh, kw)
        elif isinstance(layer, layers.BatchNormalization):
            weights = [tensor(f"{prefix}.{k}") for k in BN_TENSORS]
        else:
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [w.shape for w in weights]:
            raise ValueError(f"{layer.name}: weights of shapes {[w.shape for w in weights]}, "
                             f"the layer needs {expected}")  # fmt: skip
        converted[layer.name] = weights
    if not converted:
        raise ValueError("the model has no layers named after torchvision modules")
    return converted
