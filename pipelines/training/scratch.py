"""From scratch: train a new model on a source of labelled images, report it on a holdout,
and write it with its model card. What the bootstrap flow (the first champion),
`refit train bootstrap`, the DVC `train` stage and the benches run.

Sources: the dataset's train split (:func:`dataset_images`), or any batch-shaped folder or
archive (:func:`source_images`: staged and inspected like an intake, never merged), minus
excluded classes and excluded images (by sha256: e.g. the embedded sample's holdout and
incoming images, which the built-in model never sees).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.policies import ArchitectureConfig, IngestLimits, TrainConfig
from core.progress import Progress
from pipelines.data.dataset import Dataset
from pipelines.data.ingest import build_manifest, new_batch_id, stage_batch
from pipelines.data.sample import sample_hashes, unpack_sample
from pipelines.images.decode import ImageSet, images_from_rows, load_images, stratified_split
from pipelines.models.evaluate import holdout_card
from pipelines.models.modelfile import LoadedModel, model_card_markdown, save_model
from pipelines.models.predict import accuracy, predict_proba
from pipelines.training.architectures import build_model
from pipelines.training.fit import (
    FitResult,
    Recipe,
    as_float32,
    dtype_policy,
    fit,
    training_precision,
)
from pipelines.training.transfer import fit_transfer

MIN_IMAGES_PER_CLASS = 3  # at least one to validate on, two to learn from


def fit_from_scratch(
    images: ImageSet,
    spec: ArchitectureConfig,
    config: TrainConfig,
    progress: Progress = print,
    weights_dir: Path | None = None,
) -> tuple[LoadedModel, FitResult]:
    """Train a new model on ``images`` (a stratified share kept for validation): from scratch,
    or, when ``spec`` names pretrained weights (converted and cached in ``weights_dir``), a new
    head and the top layers on the pretrained trunk (``pipelines.training.transfer``).

    Returns:
        The model with its class names and a card of the recipe, and the fit history.

    Raises:
        ValueError: a class has too few images to hold some back for validation.
    """
    counts = np.bincount(images.y, minlength=len(images.class_names))
    few = int(counts.argmin())
    if counts[few] < MIN_IMAGES_PER_CLASS:
        raise ValueError(
            f"too few images for a validation split: {images.class_names[few]!r} has "
            f"{counts[few]}; every class needs at least {MIN_IMAGES_PER_CLASS}"
        )
    rest, held = stratified_split(images.y, config.val_share, config.seed)
    train, val = images.take(rest), images.take(held)
    precision = "float32" if spec.weights else training_precision(config.precision)
    with dtype_policy(precision):
        model = build_model(
            spec, len(images.class_names), train.x, weights_dir=weights_dir, progress=progress
        )
    progress(
        f"{'Pretrained' if spec.weights else 'From scratch'}: {spec.name}: {len(train)} "
        f"training and {len(val)} validation images, {len(images.class_names)} classes, "
        f"{model.count_params():,} parameters, {precision}"
    )
    card = {
        "recipe": "bootstrap",  # the name every model card so far carries for this recipe
        "architecture": spec.model_dump(),
        "train": config.model_dump(),
    }
    if spec.weights:
        fits, did = fit_transfer(
            model,
            train,
            val,
            progress,
            unfreeze_layers=config.pretrained_unfreeze_layers,
            epochs=config.pretrained_epochs,
            lr=config.pretrained_lr,
            head_c=config.pretrained_head_c,
            flip=config.pretrained_flip,
            patience=config.pretrained_patience,
            time_budget_s=config.time_budget_s,
            seed=config.seed,
        )
        result = FitResult(
            fits[-1].history, sum(f.seconds for f in fits), sum(f.epochs_run for f in fits)
        )
        card.update(recipe="pretrained", pretrained=did)
    else:
        result = fit(model, train, val, Recipe.scratch(config), progress, "scratch")
    if precision != "float32":
        model = as_float32(model)
    card.update({
        "train_images": len(train),
        "val_images": len(val),
        # the returned model's own score: the last epoch's, or the best one's when early
        # stopping ended the run and restored it (the history's maximum may be neither)
        "val_accuracy": round(accuracy(predict_proba(model, val.x), val.y), 4),
        "train_seconds": round(result.seconds, 1),
        "epochs_run": result.epochs_run,
        "precision": precision,
    })  # fmt: skip
    return LoadedModel(model, list(images.class_names), card), result


def dataset_images(
    dataset: Dataset,
    split: str,
    size: tuple[int, int],
    exclude_classes: set[str] = frozenset(),
    class_names: list[str] | None = None,
) -> tuple[ImageSet, dict]:
    """Decoded images of one split of the dataset, and a data card.

    Raises:
        ValueError: the split has no images (no dataset yet).
    """
    rows = dataset.rows(split, class_names, exclude_classes)
    if rows.empty:
        raise ValueError(f"the dataset has no {split} images; add a batch with `refit data add`")
    card = {"dataset_version": dataset.version, "split": split}
    return dataset.images(rows, size, class_names), card


def source_images(
    source: Path,
    staging_dir: Path,
    limits: IngestLimits,
    size: tuple[int, int],
    exclude_classes: set[str] = frozenset(),
    excluded_sha256: set[str] = frozenset(),
    progress: Progress = print,
) -> tuple[ImageSet, dict]:
    """Decoded images of a batch-shaped source, minus excluded classes and images, and a
    data card (the source and a digest of the images used)."""
    progress(f"Reading {source}")
    staged = stage_batch(source, staging_dir, limits, new_batch_id())
    try:
        manifest = build_manifest(staged, limits)
        used = manifest[
            manifest["decodable"]
            & ~manifest["label"].isin(exclude_classes)
            & ~manifest["sha256"].isin(excluded_sha256)
        ]
        progress(f"Decoding {len(used)} images")
        images = images_from_rows(staged.files_dir, used, size)
    finally:
        shutil.rmtree(staged.root, ignore_errors=True)
    digest = hashlib.sha256("\n".join(sorted(used["sha256"])).encode()).hexdigest()
    card = {
        "source": str(source),
        "images_digest": digest,
        "excluded_sample_images": len(excluded_sha256),
    }
    return images, card


def sample_holdout(archive: Path, class_names: list[str], size: tuple[int, int]) -> ImageSet:
    """The embedded sample's holdout images of ``class_names``, decoded."""
    with tempfile.TemporaryDirectory() as tmp:
        unpack_sample(archive, Path(tmp))
        root = Path(tmp) / "seed" / "holdout"
        paths = [
            p for c in class_names if (root / c).is_dir() for p in sorted((root / c).iterdir())
        ]
        return load_images(paths, [p.parent.name for p in paths], class_names, size)


Holdout = Callable[[list[str]], tuple[ImageSet, str]]  # class names -> images, a title


@dataclass(frozen=True)
class Source:
    """What a model trained from scratch learns from, and what it is reported on."""

    images: ImageSet
    card: dict
    holdout: Holdout | None


def choose_source(
    dataset: Dataset,
    size: tuple[int, int],
    *,
    source: Path | None = None,
    exclude_classes: set[str] = frozenset(),
    sample_archive: Path | None = None,
    staging_dir: Path | None = None,
    limits: IngestLimits | None = None,
    progress: Progress = print,
) -> Source:
    """The dataset's train split, reported on its holdout; or a batch-shaped ``source``
    (staged in ``staging_dir`` under ``limits``). With ``sample_archive``, the embedded
    sample's images are left out of ``source`` and the model is reported on the sample's
    holdout instead.

    Raises:
        ValueError: the dataset has no images of a split it needs.
    """
    holdout: Holdout | None = None
    if source is None:
        images, card = dataset_images(dataset, "train", size, exclude_classes)

        def holdout(names: list[str]) -> tuple[ImageSet, str]:
            held = dataset_images(dataset, "holdout", size, exclude_classes, names)[0]
            return held, "holdout (dataset)"

    else:
        hashes = sample_hashes(sample_archive) if sample_archive else set()
        images, card = source_images(
            source, staging_dir, limits, size, exclude_classes, hashes, progress
        )
    if sample_archive is not None:

        def holdout(names: list[str]) -> tuple[ImageSet, str]:
            return sample_holdout(sample_archive, names, size), "holdout (embedded sample)"

    return Source(images, card, holdout)


def train_from_scratch(
    images: ImageSet,
    spec: ArchitectureConfig,
    config: TrainConfig,
    data_card: dict,
    holdout: Holdout | None = None,
    progress: Progress = print,
    weights_dir: Path | None = None,
) -> LoadedModel:
    """Train a new model on ``images`` (:func:`fit_from_scratch`); with ``holdout`` (class
    names -> images and a title), score it there and put the numbers in its card."""
    loaded, _ = fit_from_scratch(images, spec, config, progress, weights_dir)
    if holdout is not None:
        held, title = holdout(loaded.class_names)
        metrics = holdout_card(loaded, held)
        loaded.card[title] = metrics
        progress(
            f"Holdout accuracy {metrics['accuracy']:.4f} "
            f"(with flip TTA {metrics['accuracy_tta']:.4f}) on {metrics['images']} images"
        )
    loaded.card["data"] = data_card
    return loaded


def save_with_card(loaded: LoadedModel, out: Path) -> Path:
    """Write a model file and its readable card beside it (``.md``)."""
    save_model(loaded, out)
    out.with_suffix(".md").write_text(model_card_markdown(loaded, f"Model {out.name}"))
    return out
