"""Fine-tune the champion on new data with replay; the dispatcher that picks a recipe.

Fine-tuning grows the head first when the data brings new classes
(``pipelines.training.surgery``). Each epoch mixes the new images with a stratified replay
sample of the old training set, so old classes are not forgotten; a stratified share of that
mix is held out for validation, and if the fine-tuned model is worse on it than the starting
one, the starting weights are kept. Refit's own nets train in two phases (the head alone with
everything else frozen, then the top layers unfrozen); models imported from users' files use
the gentle recipe (``pipelines.training.gentle``).
"""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np

from core.policies import FinetuneConfig
from core.progress import Progress
from pipelines.data.dataset import Dataset
from pipelines.images.decode import ImageSet, stratified_sample, stratified_split
from pipelines.models.modelfile import LoadedModel
from pipelines.models.predict import accuracy, predict_proba
from pipelines.training.fit import FitResult, Recipe, fit, set_trainable_top
from pipelines.training.gentle import finetune_gentle
from pipelines.training.surgery import grow_head


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
    model imported from a user's file or built on a pretrained trunk (its card says so),
    Refit's own for the nets Refit trains from scratch."""
    if config.recipe != "auto":
        return config.recipe
    pretrained = (champion.card.get("architecture") or {}).get("weights")
    return "gentle" if "imported_from" in champion.card or pretrained else "refit"


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
