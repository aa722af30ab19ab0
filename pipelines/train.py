"""Train: bootstrap a model from scratch, or fine-tune the champion on new data with replay.

Images arrive decoded once into a uint8 array (``pipelines.images``), then are fed through
tf.data with augmentation (random crop with reflect padding + horizontal flip). Both recipes use
SGD with Nesterov momentum, label smoothing, and a one-cycle learning rate (linear warm-up,
cosine decay) driven by whichever is further along: the step count or the wall-time budget,
so a run on a busy machine still ends on time with a fully decayed learning rate.
Bootstrap averages its weights as it goes (airbench's Lookahead), keeps the best weights on
its validation split (early stopping) and computes in bfloat16 where the CPU does so
natively; the model it returns is float32 either way.

Fine-tuning grows the head first when the data brings new classes (``pipelines.surgery``),
then trains in two phases: the head alone with everything else frozen, then the top layers
unfrozen. Each epoch mixes the new images with a stratified replay sample of the old
training set, so old classes are not forgotten; a stratified share of that mix is held out
for validation, and if the fine-tuned model is worse on it than the starting one, the
starting weights are kept. Refit's own nets use the recipe above; models imported from
users' files use the gentle one (``pipelines.gentle``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.policies import ArchitectureConfig, FinetuneConfig, TrainConfig
from pipelines.architectures import FROZEN_LAYERS, build_model
from pipelines.dataset import Dataset
from pipelines.gentle import finetune_gentle
from pipelines.images import ImageSet, stratified_sample, stratified_split
from pipelines.modelfile import LoadedModel
from pipelines.predict import accuracy, predict_proba
from pipelines.surgery import grow_head

Progress = Callable[[str], None]


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
    a 48-epoch bootstrap stopped at epoch 17, restoring an epoch-5 model (73% holdout)."""
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
    def bootstrap(cls, config: TrainConfig) -> Recipe:
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


# --------------------------------------------------------------------------- recipes


def bootstrap(
    images: ImageSet, spec: ArchitectureConfig, config: TrainConfig, progress: Progress = print
) -> tuple[LoadedModel, FitResult]:
    """Train a new model from scratch on ``images`` (a stratified share kept for validation).

    Returns:
        The model with its class names and a card of the recipe, and the fit history.
    """
    rest, held = stratified_split(images.y, config.val_share, config.seed)
    train, val = images.take(rest), images.take(held)
    precision = training_precision(config.precision)
    with dtype_policy(precision):
        model = build_model(spec, len(images.class_names), init_images=train.x)
    progress(
        f"Bootstrap {spec.name}: {len(train)} training and {len(val)} validation images, "
        f"{len(images.class_names)} classes, {model.count_params():,} parameters, {precision}"
    )
    result = fit(model, train, val, Recipe.bootstrap(config), progress, "bootstrap")
    if precision != "float32":
        model = as_float32(model)
    card = {
        "recipe": "bootstrap",
        "architecture": spec.model_dump(),
        "train": config.model_dump(),
        "train_images": len(train),
        "val_images": len(val),
        # the returned model's own score: the last epoch's, or the best one's when early
        # stopping ended the run and restored it (the history's maximum may be neither)
        "val_accuracy": round(accuracy(predict_proba(model, val.x), val.y), 4),
        "train_seconds": round(result.seconds, 1),
        "epochs_run": result.epochs_run,
        "precision": precision,
    }
    return LoadedModel(model, list(images.class_names), card), result


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


def finetune(
    champion: LoadedModel,
    new: ImageSet,
    old: ImageSet,
    config: FinetuneConfig,
    progress: Progress = print,
) -> tuple[LoadedModel, list[FitResult]]:
    """Fine-tune the champion on ``new`` images mixed with a replay sample of ``old`` ones.

    Classes of ``new`` that the champion lacks are added by growing its head first (old
    output indices never move). ``champion`` itself is not modified.
    """
    added = [c for c in new.class_names if c not in champion.class_names]
    added += [c for c in old.class_names if c not in champion.class_names and c not in added]
    model = grow_head(champion, added)
    if added:
        progress(f"Grew the output layer by {len(added)} for new classes: {', '.join(added)}")
    else:
        clone = keras.models.clone_model(champion.model)
        clone.set_weights(champion.model.get_weights())
        model = LoadedModel(clone, list(champion.class_names), dict(champion.card))
    names = model.class_names
    train, val, replay = _train_and_validation(new.relabel(names), old.relabel(names), config)
    recipe = recipe_for(champion, config)
    progress(
        f"Fine-tune ({recipe} recipe) on {len(train) - len(replay)} new + {len(replay)} "
        f"replayed images; {len(val)} held for validation"
    )
    start_weights = model.model.get_weights()
    before = accuracy(predict_proba(model.model, val.x), val.y) if len(val) else float("nan")
    if recipe == "gentle":
        results, did = finetune_gentle(model.model, train, val, config, progress)
    else:
        results, did = _finetune_refit(model.model, train, config, progress), {"recipe": "refit"}
    after = accuracy(predict_proba(model.model, val.x), val.y) if len(val) else float("nan")
    kept = not (after < before)
    if not kept:  # never hand the gate a model worse than the one we started from
        model.model.set_weights(start_weights)
        progress(
            f"Validation accuracy fell from {before:.4f} to {after:.4f}: kept the starting "
            "weights (the gate judges the model as it was)"
        )
    else:
        progress(f"Validation accuracy {before:.4f} -> {after:.4f}")
    model.card = {
        **model.card,
        "recipe": "finetune",
        "finetune": config.model_dump(),
        "finetune_recipe": did,
        "new_images": len(new),
        "replay_images": len(replay),
        "val_images": len(val),
        "val_accuracy_before": round(before, 4),
        "val_accuracy_after": round(after, 4),
        "kept_starting_weights": not kept,
        "train_seconds": round(sum(r.seconds for r in results), 1),
    }
    return model, results


def _train_and_validation(
    new: ImageSet, old: ImageSet, config: FinetuneConfig
) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(train, validation, replay): the new images minus a stratified ``val_share`` held for
    validation, plus the replay sample; validation also gets old images the replay sample
    left unused (the same share of it), so holding data back never costs replay."""
    replay_n = min(len(old), round(config.replay_ratio * len(new)))
    picked = stratified_sample(old.y, replay_n, config.seed)
    replay = old.take(picked)
    kept, held = stratified_split(new.y, config.val_share, config.seed, min_rest=1)
    if not config.val_share:
        kept, held = np.arange(len(new)), np.zeros(0, np.int64)
    unused = np.setdiff1d(np.arange(len(old)), picked)
    n_old = min(len(unused), round(config.val_share * replay_n))
    old_val = old.take(unused[stratified_sample(old.y[unused], n_old, config.seed + 1)])
    train = ImageSet.concat([new.take(kept), replay])
    return train, ImageSet.concat([new.take(held), old_val]), replay


def recipe_for(champion: LoadedModel, config: FinetuneConfig) -> str:
    """The recipe to fine-tune ``champion`` with: as configured, or for ``auto`` gentle for a
    model imported from a user's file (its card says so), Refit's own for Refit's nets."""
    if config.recipe != "auto":
        return config.recipe
    return "gentle" if "imported_from" in champion.card else "refit"


def _finetune_refit(
    model: keras.Model, train: ImageSet, config: FinetuneConfig, progress: Progress
) -> list[FitResult]:
    """Refit's own recipe: the head alone, then the top layers, SGD + one-cycle."""
    head, body = Recipe.finetune_phases(config)
    results = []
    if config.head_epochs:
        set_trainable_top(model, 0)
        results.append(fit(model, train, None, head, progress, "head"))
    set_trainable_top(model, config.unfreeze_layers)
    body = replace(body, budget_s=body.budget_s - sum(r.seconds for r in results))
    results.append(fit(model, train, None, body, progress, "finetune"))
    set_trainable_top(model, -1)
    return results


class NotTrainable(ValueError):
    """This data cannot be trained on (e.g. the batch left no training images); retrying
    would fail the same way."""


def finetune_on_batch(
    champion: LoadedModel,
    dataset: Dataset,
    batch_id: str,
    config: FinetuneConfig,
    *,
    progress: Progress,
) -> tuple[LoadedModel, list[FitResult]]:
    """Fine-tune on one merged batch's training images, replaying the rest of the train split.

    Raises:
        NotTrainable: the batch has no training images in the dataset.
    """
    size = champion.input_size
    train = dataset.rows("train")
    batch_rows = train[train["batch_id"] == batch_id]
    if batch_rows.empty:
        raise NotTrainable(f"batch {batch_id} has no training images in the dataset")
    new = dataset.images(batch_rows, size)
    old = dataset.images(train[train["batch_id"] != batch_id], size)
    challenger, fits = finetune(champion, new, old, config, progress)
    challenger.card["batch_id"] = batch_id
    return challenger, fits
