"""The fitting machinery every recipe shares: the tf.data pipeline (random crop with reflect
padding + horizontal flip over images decoded once into uint8), SGD with Nesterov momentum,
label smoothing and a one-cycle learning rate (linear warm-up, cosine decay) driven by
whichever is further along, the step count or the wall-time budget, so a run on a busy
machine still ends on time with a fully decayed learning rate; Lookahead weight averaging,
early stopping, the training precision and the trainable top of a model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.policies import FinetuneConfig, TrainConfig
from core.progress import Progress
from pipelines.images.decode import ImageSet
from pipelines.training.architectures import FROZEN_LAYERS

# --------------------------------------------------------------------------- data


def _augment(pad: int, flip: bool):
    def augment(image, label):
        if flip:
            image = tf.image.random_flip_left_right(image)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        return tf.image.random_crop(padded, tf.shape(image)), label

    return augment


def make_dataset(
    images: ImageSet, batch_size: int, train: bool, seed: int, flip: bool = True
) -> tf.data.Dataset:
    """tf.data pipeline: one-hot labels, float pixels 0-255; shuffled + augmented for train
    (random crop with reflect padding, and a horizontal flip unless ``flip`` is False)."""
    onehot = np.eye(len(images.class_names), dtype=np.float32)[images.y]
    ds = tf.data.Dataset.from_tensor_slices((images.x, onehot))
    if train:
        pad = max(1, images.x.shape[1] // 8)
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(_augment(pad, flip), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- fitting


class OneCycle(keras.callbacks.Callback):
    """Linear warm-up then cosine decay, by max(step share, wall-time share); stops at 1."""

    def __init__(self, peak: float, warmup_share: float, total_steps: int, budget_s: float):
        super().__init__()
        self.peak, self.warmup, self.total, self.budget = peak, warmup_share, total_steps, budget_s
        self.step, self.start = 0, time.monotonic()

    def progress(self) -> float:
        return max(self.step / self.total, (time.monotonic() - self.start) / self.budget)

    def lr_at(self, p: float) -> float:
        if p < self.warmup:
            return self.peak * (0.05 + 0.95 * p / self.warmup)
        decay = min(1.0, (p - self.warmup) / max(1e-9, 1 - self.warmup))
        return self.peak * 0.5 * (1 + math.cos(math.pi * decay))

    def on_train_batch_begin(self, batch, logs=None):
        p = self.progress()
        if p >= 1.0:
            self.model.stop_training = True
        self.model.optimizer.learning_rate.assign(self.lr_at(min(p, 1.0)))
        self.step += 1


class Lookahead(keras.callbacks.Callback):
    """airbench's Lookahead: every few steps, once ``start`` of the schedule has passed, pull
    an average of the weights towards the current ones and copy it back into the model.
    The average's decay grows with the schedule's progress (cubed), so it follows the
    weights early and averages strongly at the end. BatchNorm statistics are averaged too.
    """

    def __init__(self, schedule: OneCycle, every: int = 5, start: float = 0.3):
        super().__init__()
        self.schedule, self.every, self.start = schedule, every, start
        self.steps, self.average = 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        progress = min(self.schedule.progress(), 1.0)
        if progress < self.start or self.steps % self.every:
            return
        weights = [v for v in self.model.weights if v.dtype.startswith("float")]
        if self.average is None:
            self.average = [v.numpy() for v in weights]
            return
        decay = 0.95**self.every * progress**3
        for variable, average in zip(weights, self.average, strict=True):
            average += (1 - decay) * (variable.numpy() - average)
            variable.assign(average)


class EpochLog(keras.callbacks.Callback):
    """One progress line per epoch: losses, accuracies, learning rate, speed."""

    def __init__(self, progress: Progress, epochs: int, images_per_epoch: int, label: str):
        super().__init__()
        self.report, self.epochs, self.images, self.label = (
            progress,
            epochs,
            images_per_epoch,
            label,
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.monotonic() - self.start
        val = f" val_acc {logs['val_accuracy']:.4f}" if "val_accuracy" in logs else ""
        lr = float(self.model.optimizer.learning_rate)
        self.report(
            f"{self.label} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', 0):.4f} "
            f"acc {logs.get('accuracy', 0):.4f}{val} lr {lr:.4f} "
            f"{seconds:.0f}s ({self.images / max(seconds, 1e-9):.0f} img/s)"
        )


def early_stopping(epochs: int, patience: int) -> keras.callbacks.EarlyStopping:
    """Stop when validation accuracy has not improved for ``patience`` epochs, restoring
    the best weights; it only watches the second half of the run. At the one-cycle peak the
    validation accuracy swings by 10 points from epoch to epoch, and watched from the start
    a 48-epoch run from scratch stopped at epoch 17, restoring an epoch-5 model (73% holdout)."""
    return keras.callbacks.EarlyStopping(
        "val_accuracy",
        patience=patience,
        restore_best_weights=True,
        mode="max",
        start_from_epoch=epochs // 2,
    )


@dataclass
class FitResult:
    history: dict[str, list[float]]
    seconds: float
    epochs_run: int


@dataclass(frozen=True)
class Recipe:
    """One call of :func:`fit`: SGD + Nesterov, label smoothing, the one-cycle schedule."""

    epochs: int
    batch_size: int
    peak_lr: float
    warmup_share: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    budget_s: float
    seed: int
    patience: int | None = None  # early stopping on the validation split; None: off
    lookahead: bool = False  # airbench's weight averaging

    @classmethod
    def _of(cls, config: TrainConfig | FinetuneConfig, **rest) -> Recipe:
        shared = ("batch_size", "warmup_share", "momentum", "weight_decay", "label_smoothing")
        return cls(**{k: getattr(config, k) for k in (*shared, "seed")}, **rest)

    @classmethod
    def scratch(cls, config: TrainConfig) -> Recipe:
        return cls._of(
            config,
            epochs=config.epochs,
            peak_lr=config.peak_lr,
            budget_s=config.time_budget_s,
            patience=config.patience,
            lookahead=True,
        )

    @classmethod
    def finetune_phases(cls, config: FinetuneConfig) -> tuple[Recipe, Recipe]:
        """(head only, top unfrozen): the wall-time budget split in proportion to epochs."""
        head_share = config.head_epochs / max(1, config.head_epochs + config.epochs)
        body = cls._of(
            config, epochs=config.epochs, peak_lr=config.lr, budget_s=config.time_budget_s
        )
        head = replace(
            body,
            epochs=config.head_epochs,
            peak_lr=config.head_lr,
            budget_s=config.time_budget_s * head_share,
        )
        return head, body


def fit(
    model: keras.Model,
    train: ImageSet,
    val: ImageSet | None,
    recipe: Recipe,
    progress: Progress,
    label: str,
) -> FitResult:
    """Compile and train ``model`` with ``recipe``; returns the history."""
    keras.utils.set_random_seed(recipe.seed)
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=recipe.peak_lr,
            momentum=recipe.momentum,
            nesterov=True,
            weight_decay=recipe.weight_decay or None,
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    steps = math.ceil(len(train) / recipe.batch_size) * recipe.epochs
    schedule = OneCycle(recipe.peak_lr, recipe.warmup_share, steps, recipe.budget_s)
    callbacks: list[keras.callbacks.Callback] = [
        schedule,
        EpochLog(progress, recipe.epochs, len(train), label),
    ]
    if recipe.lookahead:
        callbacks.append(Lookahead(schedule))
    if val is not None and recipe.patience:
        callbacks.append(early_stopping(recipe.epochs, recipe.patience))
    start = time.monotonic()
    history = model.fit(
        make_dataset(train, recipe.batch_size, True, recipe.seed),
        validation_data=make_dataset(val, 1024, False, recipe.seed) if val is not None else None,
        epochs=recipe.epochs,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    seconds = time.monotonic() - start
    return FitResult(
        {k: [float(v) for v in vs] for k, vs in history.history.items()},
        seconds,
        len(history.history.get("loss", [])),
    )


# --------------------------------------------------------------------------- precision


def training_precision(choice: str) -> str:
    """The Keras dtype policy to train in: ``choice``, or for ``auto`` bfloat16 mixed
    precision where the CPU computes bf16 natively (1.26-1.34x faster here) and float32
    elsewhere (where bf16 is emulated and several times slower)."""
    if choice != "auto":
        return choice
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under the Keras dtype policy ``name``; the global policy is restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def as_float32(model: keras.Model) -> keras.Model:
    """A float32 copy of a mixed-precision model (same weights), so that serving and later
    fine-tuning never depend on bf16 support."""

    def strip(config):
        if isinstance(config, dict):
            if config.get("class_name") == "DTypePolicy":
                return "float32"
            return {key: strip(value) for key, value in config.items()}
        if isinstance(config, list):
            return [strip(value) for value in config]
        return config

    copy = type(model).from_config(strip(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def set_trainable_top(model: keras.Model, n_layers: int) -> None:
    """Freeze everything, then unfreeze the top ``n_layers`` weight layers (-1: all).

    Frozen BatchNormalization layers run in inference mode (Keras semantics), so their
    statistics are kept. Layers that are fixed by design (``FROZEN_LAYERS``) stay frozen.
    """
    weighted = [
        layer for layer in _flat_layers(model) if layer.weights and layer.name not in FROZEN_LAYERS
    ]
    for layer in weighted:
        layer.trainable = n_layers < 0
    if n_layers >= 0:
        for layer in weighted[len(weighted) - n_layers :] if n_layers else []:
            layer.trainable = True
    model.get_layer("logits").trainable = True


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    flat = []
    for layer in model.layers:
        flat += _flat_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return flat
