"""The input contract: which pixels a model expects, wrapped into its graph.

Every Refit model takes raw RGB pixels, 0-255 as float32, from the one decoder that
training and serving share. A user's model may have been trained on other values: [0, 1],
[-1, 1], per-channel mean/std, or what a ``keras.applications`` family's
``preprocess_input`` does (for ResNet50/VGG: BGR order minus the ImageNet means). Declared
at import, that mapping becomes the model's first layer, ``pixel_contract``: a fixed 1x1
convolution (a per-channel scale and offset, with the channel order swapped for BGR
models), never trained. From then on the model is fed like every other.

When the user does not know, calibration (``pipelines.training.imports``) runs labelled images
through the model under each plausible contract; :class:`Calibration` says which one makes
its predictions agree with the labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

LAYER = "pixel_contract"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# keras.applications families -> the contract their preprocess_input implements.
APPLICATIONS = {
    **dict.fromkeys(
        (
            "mobilenet",
            "mobilenet_v2",
            "resnet_v2",
            "inception_v3",
            "inception_resnet_v2",
            "xception",
            "nasnet",
        ),
        "-1-1",
    ),
    **dict.fromkeys(("resnet", "resnet50", "vgg16", "vgg19"), "caffe"),
    "densenet": "torch",
    # These models rescale inside themselves: preprocess_input passes pixels through.
    **dict.fromkeys(
        ("efficientnet", "efficientnet_v2", "convnext", "mobilenet_v3", "regnet"), "0-255"
    ),
}
PLAUSIBLE = ("0-255", "0-1", "-1-1", "caffe", "torch")
SPEC_HELP = (
    "0-255, 0-1, -1-1, mean=R,G,B/std=R,G,B (in 0-255 units), or keras.applications.NAME "
    f"({', '.join(sorted(APPLICATIONS))})"
)


class BadContract(ValueError):
    """A pixel contract that cannot be parsed."""


@dataclass(frozen=True)
class PixelContract:
    """``model_input = raw[channels] * scale + offset`` per channel (raw in RGB 0-255)."""

    name: str
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    bgr: bool = False

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """What the user's model was fed: ``raw`` (N, H, W, 3) RGB 0-255 mapped."""
        x = np.asarray(raw, dtype=np.float32)
        if self.bgr:
            x = x[..., ::-1]
        return x * np.float32(self.scale) + np.float32(self.offset)

    @property
    def identity(self) -> bool:
        return not self.bgr and self.scale == (1.0, 1.0, 1.0) and self.offset == (0.0, 0.0, 0.0)


def _uniform(name: str, scale: float, offset: float) -> PixelContract:
    return PixelContract(name, (scale,) * 3, (offset,) * 3)


def _mean_std(name: str, mean, std, bgr: bool = False) -> PixelContract:
    scale = tuple(1.0 / s for s in std)
    return PixelContract(name, scale, tuple(-m / s for m, s in zip(mean, std, strict=True)), bgr)


def parse(spec: str) -> PixelContract:
    """A contract from its written form (see ``SPEC_HELP``).

    Raises:
        BadContract: naming the accepted forms.
    """
    text = spec.strip().lower().replace(" ", "")
    if text.startswith("keras.applications."):
        family = text.removeprefix("keras.applications.")
        if family not in APPLICATIONS:
            raise BadContract(f"unknown keras.applications family {family!r}; use {SPEC_HELP}")
        return _named(APPLICATIONS[family], spec.strip())
    if text in PLAUSIBLE:
        return _named(text, text)
    match = re.fullmatch(r"mean=([-\d.,]+)/std=([\d.,]+)", text)
    if match:
        mean, std = (tuple(float(v) for v in group.split(",")) for group in match.groups())
        if len(mean) == 1:
            mean *= 3
        if len(std) == 1:
            std *= 3
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise BadContract(f"{spec!r}: mean and std take 1 or 3 values, std above 0")
        return _mean_std(text, mean, std)
    raise BadContract(f"unknown pixel range {spec!r}; use {SPEC_HELP}")


def _named(kind: str, name: str) -> PixelContract:
    if kind == "0-255":
        return _uniform(name, 1.0, 0.0)
    if kind == "0-1":
        return _uniform(name, 1 / 255, 0.0)
    if kind == "-1-1":
        return _uniform(name, 1 / 127.5, -1.0)
    if kind == "caffe":
        return PixelContract(name, (1.0,) * 3, tuple(-m for m in CAFFE_MEAN_BGR), bgr=True)
    return _mean_std(name, [m * 255 for m in IMAGENET_MEAN], [s * 255 for s in IMAGENET_STD])


@dataclass(frozen=True)
class Calibration:
    """Agreement with the labels of one batch under each plausible contract.

    The best contract has the lowest log loss: a proper score that sees both a collapse
    (a net trained on 0-255 fed 0-1 guesses) and overconfidence (a ReLU net fed 255 times
    its training range often keeps its argmax, not its confidence).
    """

    accuracy: dict[str, float]  # contract name -> share of images predicted as labelled
    loss: dict[str, float]  # contract name -> mean cross-entropy against the labels
    images: int

    @property
    def best(self) -> str:
        return min(self.loss, key=self.loss.get)

    def verdict(self, declared: str | None) -> str | None:
        """A warning when the declared contract is not the best one, else None."""
        if declared is None or declared not in self.accuracy or declared == self.best:
            return None
        best = self.best
        worse_acc = self.accuracy[best] - self.accuracy[declared] >= 0.02
        worse_loss = self.loss[declared] > 1.5 * self.loss[best] + 0.02
        if not (worse_acc or worse_loss):
            return None
        return (
            f"the declared pixel range {declared} agrees with the labels on "
            f"{self.accuracy[declared]:.1%} of {self.images} images (log loss "
            f"{self.loss[declared]:.3f}), {best} on {self.accuracy[best]:.1%} (log loss "
            f"{self.loss[best]:.3f}): check how the model was trained"
        )

    def table(self) -> str:
        rows = sorted(self.loss, key=self.loss.get)
        return "\n".join(
            f"  {name:>8}: accuracy {self.accuracy[name]:6.1%}  log loss {self.loss[name]:.3f}"
            + ("  <- best" if name == self.best else "")
            for name in rows
        )
