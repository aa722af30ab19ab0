"""A new classifier on a pretrained trunk (``architecture.weights`` set): what
`refit train bootstrap` runs for a backbone with ImageNet weights.

1. **Features once.** The trunk is cut below its top ``unfreeze_layers`` weight layers; the
   layers under the cut run once over the training images (and their mirror images, with
   ``flip``), the validation images, each decoded once at the model's input size.
2. **The head.** A multinomial logistic regression (scikit-learn, L-BFGS, L2 strength
   ``head_c``) on the pooled features: convex, so it needs no learning rate, no epochs and no
   validation split to stop it, which on a few hundred photos is what decides the result
   (Adam with early stopping on the same features stopped early and scored 3-5 points lower
   on CIFAR-10 at 100 per class).
3. **The top.** The top layers and the head train on the cached features at Adam's ``lr``
   (batch norm in inference mode), with early stopping on the validation loss restoring the
   best epoch.
"""

from __future__ import annotations

import time

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression

from core.progress import Progress
from pipelines.images.decode import ImageSet
from pipelines.models.predict import outputs
from pipelines.training.architectures import FROZEN_LAYERS
from pipelines.training.fit import FitResult
from pipelines.training.gentle import Fitter, array_data, cut_below, top_layers


def logistic_head(features: np.ndarray, y: np.ndarray, c: float) -> list[np.ndarray]:
    """The kernel and bias of a softmax layer equal to a multinomial logistic regression on
    ``features`` (every class in ``y``, numbered 0..K-1, has examples)."""
    head = LogisticRegression(C=c, max_iter=1000).fit(features, y)
    kernel, bias = head.coef_.T, head.intercept_
    if kernel.shape[1] == 1:  # two classes: one logit z for class 1; softmax(-z/2, z/2)
        kernel = np.concatenate([-kernel / 2, kernel / 2], axis=1)
        bias = np.concatenate([-bias / 2, bias / 2])
    return [kernel.astype("float32"), bias.astype("float32")]


def fit_transfer(
    model: keras.Model,
    train: ImageSet,
    val: ImageSet,
    progress: Progress,
    *,
    unfreeze_layers: int,
    epochs: int,
    lr: float,
    head_c: float,
    flip: bool,
    patience: int,
    time_budget_s: float,
    seed: int,
) -> tuple[list[FitResult], dict]:
    """Train ``model``'s head, then its top layers (in place); returns the fits and a card."""
    started = time.monotonic()
    unfrozen = top_layers(model, unfreeze_layers)
    split = cut_below(model, unfrozen[-1]) if unfrozen else None
    if split is None:  # nothing to unfreeze, or no single tensor to cut at: the head alone
        bottom = keras.Model(model.inputs, model.get_layer("logits").input)
        unfrozen = []
    else:
        bottom = split[0]
    images = len(train) * (2 if flip else 1) + len(val)
    progress(f"Pretrained trunk: features of {images} images, once ({bottom.output.shape[1:]})")
    maps = outputs(bottom, train.x, 64)
    if flip:
        maps = np.concatenate([maps, outputs(bottom, train.x[:, :, ::-1], 64)])
    y = np.concatenate([train.y, train.y]) if flip else train.y
    val_maps = outputs(bottom, val.x, 64)
    pooled = keras.Model(bottom.output, model.get_layer("logits").input) if split else None
    features = outputs(pooled, maps, 256) if pooled else maps

    model.get_layer("logits").set_weights(logistic_head(features, y, head_c))
    head_seconds = time.monotonic() - started
    progress(f"Head: logistic regression on {len(features)} feature vectors ({head_seconds:.0f} s)")
    fits = [FitResult({}, head_seconds, 1)]
    card = {"recipe": "transfer", "head": "logistic regression", "head_c": head_c, "flip": flip}
    if not unfrozen or not epochs:
        return fits, card

    for layer in model.layers:
        layer.trainable = layer in unfrozen or layer.name == "logits"
    eye = np.eye(len(train.class_names), dtype="float32")
    fitter = Fitter(patience, started + time_budget_s, progress, len(maps))
    progress(f"Top {len(unfrozen)} conv/dense layers unfrozen: Adam at {lr:.2g}")
    fits.append(
        fitter.fit(
            split[1],
            array_data(maps, eye[y], 32, seed, True),
            array_data(val_maps, eye[val.y], 256, seed, False),
            lr,
            epochs,
            "top",
        )
    )
    for layer in model.layers:
        layer.trainable = layer.name not in FROZEN_LAYERS
    card.update(lr=lr, epochs=fits[1].epochs_run, unfrozen_layers=[u.name for u in unfrozen])
    return fits, card
