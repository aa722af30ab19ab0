"""The gentle fine-tune: for models Refit did not make.

Refit's own recipe (SGD at a high learning rate, label smoothing, one-cycle) suits the
nets it trains from scratch; applied to someone's Adam-trained CNN it knocks the weights
out of their basin (a 99.6% traffic-sign net fell to ~50% training accuracy). This recipe
moves the weights as little as the data asks:

1. **Head only.** The layers below ``logits`` are frozen, so their output is computed once
   and the head trains on those features (seconds, even for a 224 px MobileNet). Adam's
   learning rate comes from a short LR range test on the head (a tenth of the rate at the
   loss's minimum on a fixed probe set) unless one is set. Early stopping on the
   validation loss restores the best epoch.
2. **Top unfrozen.** The top ``gentle_unfreeze_layers`` conv/dense layers train at a tenth
   of that rate (at most 1e-4), batch norm kept in inference mode (its statistics came
   from the user's data). For models that work at ``cache_features_from_px`` or more
   (their input, or a resize layer inside), the frozen part below the first unfrozen layer
   runs once and phase 2 trains only the top on its output; smaller models train whole
   with translation augmentation (never flips: a mirrored "keep left" sign is another
   class).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from core.policies import FinetuneConfig
from core.progress import Progress
from pipelines.images.decode import ImageSet
from pipelines.models.predict import outputs
from pipelines.training.architectures import FROZEN_LAYERS
from pipelines.training.fit import EpochLog, FitResult, make_dataset

WEIGHT_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
MAX_BODY_LR = 1e-4


class Budget(keras.callbacks.Callback):
    """Stop training once the wall-time budget is spent."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() > self.deadline:
            self.model.stop_training = True


def lr_range_test(head: keras.Model, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Adam's learning rate for ``head``: train a copy with the rate rising from 1e-6 to 1
    over 48 steps, measuring the loss on a fixed probe set after each; a tenth of the rate
    at its minimum, or Adam's default 1e-3 when no rate lowers the loss by 2%."""
    probe = keras.models.clone_model(head)
    probe.set_weights(head.get_weights())
    probe.compile(optimizer=keras.optimizers.Adam(1e-6), loss="categorical_crossentropy")
    rng = np.random.default_rng(seed)
    held = rng.choice(len(x), size=min(512, len(x)), replace=False)

    def loss_now() -> float:
        p = np.clip(np.asarray(probe(x[held], training=False)), 1e-7, 1.0)
        return float(-np.mean(np.sum(y[held] * np.log(p), axis=1)))

    steps, low, high = 48, 1e-6, 1.0
    initial = best = loss_now()
    best_lr = None
    for step in range(steps):
        lr = low * (high / low) ** (step / (steps - 1))
        probe.optimizer.learning_rate.assign(lr)
        pick = rng.choice(len(x), size=min(64, len(x)), replace=False)
        probe.train_on_batch(x[pick], y[pick])
        loss = loss_now()
        if not math.isfinite(loss) or loss > 4 * best:
            break
        if loss < best:
            best, best_lr = loss, lr
    if best_lr is None or best > 0.98 * initial:
        return 1e-3
    return float(np.clip(best_lr / 10, 1e-5, 1e-2))


@dataclass(frozen=True)
class Fitter:
    """What every phase of one gentle fine-tune shares: early stopping's patience, the
    wall-time deadline, the progress line and the number of images per epoch."""

    patience: int
    deadline: float
    progress: Progress
    images: int

    def fit(self, net, train_data, val_data, lr: float, epochs: int, label: str) -> FitResult:
        """Adam at ``lr`` for up to ``epochs``; the best epoch on val_loss is kept."""
        net.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        callbacks = [
            EpochLog(self.progress, epochs, self.images, label),
            # val_loss, not val_accuracy: on a small validation split the accuracy sits still
            # for epochs while a new class's unit is still learning, and the best epoch
            # would be 1
            keras.callbacks.EarlyStopping(
                "val_loss", patience=self.patience, restore_best_weights=True
            ),
            Budget(self.deadline),
        ]
        start = time.monotonic()
        history = net.fit(
            train_data,
            validation_data=val_data,
            epochs=epochs,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,  # the tf.data pipeline shuffles
        )
        return FitResult(
            {k: [float(v) for v in vs] for k, vs in history.history.items()},
            time.monotonic() - start,
            len(history.history.get("loss", [])),
        )


def array_data(x, y, batch_size, seed, shuffle):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def top_layers(model: keras.Model, n: int) -> list[keras.layers.Layer]:
    """The top ``n`` conv/dense layers below ``logits`` (-1: all), top first."""
    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, WEIGHT_LAYERS) and layer.name not in ("logits", *FROZEN_LAYERS)
    ]
    return list(reversed(weighted)) if n < 0 else list(reversed(weighted))[:n]


def working_px(model: keras.Model) -> int:
    """The largest image size inside ``model``: its input's, or a resize layer's (a 32 px
    model on a 224 px backbone works at 224)."""
    sizes = [model.input_shape[1] or 0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Resizing):
            sizes.append(layer.height)
    return max(sizes)


def cut_below(model: keras.Model, lowest: keras.layers.Layer):
    """``(bottom, top)``: ``model`` split at the last tensor below ``lowest`` that every
    path passes through, or None if there is none (then train the whole model)."""
    names = [layer.name for layer in model.layers]
    for layer in reversed(model.layers[1 : names.index(lowest.name)]):
        try:
            top = keras.Model(layer.output, model.output)
        except ValueError:
            continue  # a residual branch bypasses this tensor
        return keras.Model(model.inputs, layer.output), top
    return None


def finetune_gentle(
    model: keras.Model,
    train: ImageSet,
    val: ImageSet,
    config: FinetuneConfig,
    progress: Progress,
) -> tuple[list[FitResult], dict]:
    """Fine-tune ``model`` (in place) with the gentle recipe; returns the fits and a card of
    what it did (learning rates, epochs, which layers, whether features were cached)."""
    fitter = Fitter(config.patience, time.monotonic() + config.time_budget_s, progress, len(train))
    k = len(train.class_names)
    y_train, y_val = np.eye(k, dtype="float32")[train.y], np.eye(k, dtype="float32")[val.y]
    head_fit, lr = _train_head(model, train, val, (y_train, y_val), config, fitter)
    fits = [head_fit]
    card = {"recipe": "gentle", "head_lr": float(lr), "head_epochs": head_fit.epochs_run}
    unfrozen = top_layers(model, config.gentle_unfreeze_layers)
    if not unfrozen or not config.gentle_epochs:
        return fits, card
    body_lr = min(lr / 10, MAX_BODY_LR)
    split = None
    if working_px(model) >= config.cache_features_from_px:
        split = cut_below(model, unfrozen[-1])
    for layer in model.layers:
        layer.trainable = layer in unfrozen or layer.name == "logits"
    if split is not None:
        shape = split[1].input_shape[1:]
        progress(f"Top {len(unfrozen)} layers: their input computed once ({shape})")
    train_data, val_data = _top_data(split, train, val, (y_train, y_val), config.seed)
    progress(f"Top {len(unfrozen)} conv/dense layers unfrozen: Adam at {body_lr:.2g}")
    net = split[1] if split else model
    fits.append(fitter.fit(net, train_data, val_data, body_lr, config.gentle_epochs, "finetune"))
    for layer in model.layers:  # as it was; fixed layers stay fixed for the next recipe
        layer.trainable = layer.name not in FROZEN_LAYERS
    card.update(
        body_lr=float(body_lr),
        body_epochs=fits[1].epochs_run,
        unfrozen_layers=[layer.name for layer in unfrozen],
        features_cached=split is not None,
    )
    return fits, card


def _train_head(model, train, val, targets, config: FinetuneConfig, fitter: Fitter):
    """The output layer alone, on the frozen layers' features computed once; returns its
    fit and the learning rate (as set, or from an LR range test)."""
    y_train, y_val = targets
    logits = model.get_layer("logits")
    below = keras.Model(model.inputs, logits.input)
    fitter.progress(
        f"Gentle fine-tune: the frozen layers' features of {len(train) + len(val)} images, once"
    )
    f_train, f_val = outputs(below, train.x, 128), outputs(below, val.x, 128)
    k = len(train.class_names)
    head = keras.Sequential(
        [keras.Input(f_train.shape[1:]), keras.layers.Dense(k), keras.layers.Softmax()]
    )
    head.layers[0].set_weights(logits.get_weights())
    lr = config.gentle_lr or lr_range_test(head, f_train, y_train, config.seed)
    how = "set" if config.gentle_lr else "from an LR range test"
    fitter.progress(f"Head: Adam at {lr:.2g} ({how})")
    fit = fitter.fit(
        head,
        array_data(f_train, y_train, 64, config.seed, True),
        array_data(f_val, y_val, 512, config.seed, False),
        lr,
        config.gentle_head_epochs,
        "head",
    )
    logits.set_weights(head.layers[0].get_weights())
    return fit, lr


def _top_data(split, train: ImageSet, val: ImageSet, targets, seed: int):
    """Training and validation data for the unfrozen top: the cut's input computed once
    when the model is split, else the images themselves."""
    y_train, y_val = targets
    if split is None:
        return make_dataset(train, 32, True, seed, flip=False), make_dataset(val, 256, False, seed)
    bottom, _ = split
    x_train, x_val = outputs(bottom, train.x, 128), outputs(bottom, val.x, 128)
    return array_data(x_train, y_train, 32, seed, True), array_data(x_val, y_val, 256, seed, False)
