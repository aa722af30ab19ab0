"""Bootstrap: train a model from scratch on a source of labelled images, report it on a
holdout, and write it with its model card. What `refit train bootstrap`, the bootstrap flow
(train from scratch), the DVC `train` stage and the benches run.

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
from pathlib import Path

from core.policies import ArchitectureConfig, IngestLimits, TrainConfig
from pipelines.dataset import Dataset
from pipelines.images import ImageSet, images_from_rows, load_images
from pipelines.ingest import build_manifest, new_batch_id, stage_batch
from pipelines.modelfile import LoadedModel, model_card_markdown, save_model
from pipelines.predict import holdout_metrics
from pipelines.sample import unpack_sample
from pipelines.train import bootstrap

Progress = Callable[[str], None]


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


def train_from_scratch(
    images: ImageSet,
    spec: ArchitectureConfig,
    config: TrainConfig,
    data_card: dict,
    holdout: Callable[[list[str]], tuple[ImageSet, str]] | None = None,
    progress: Progress = print,
) -> LoadedModel:
    """Bootstrap a model on ``images``; with ``holdout`` (class names -> images and a
    title), score it there and put the numbers in its card."""
    loaded, _ = bootstrap(images, spec, config, progress=progress)
    if holdout is not None:
        held, title = holdout(loaded.class_names)
        metrics = holdout_metrics(loaded.model, loaded.class_names, held.x, held.y)
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
