"""Benchmark: what the dataset's JPEG compression costs the built-in model's recipe.

The shared CIFAR-10 images are JPEGs at quality 75 with 4:2:0 chroma. The originals are
not here, so this measures the slope instead: short bootstrap runs (same recipe, same
split) on the images as shipped (the baseline) and re-encoded at lower qualities, every
image (training, validation, holdout) alike. libjpeg scales its quantisation steps by
(200 - 2q) / 100 above quality 50 and 50 / q below, so the accuracy lost per unit of that
scale, taken back from 0.5 (quality 75) to 0, estimates what the compression costs.

Data: the 9 classes of the built-in model (no `truck`), minus the embedded sample's
holdout and incoming images; the holdout is the embedded sample's.

Run: .venv/bin/python bench/jpeg.py [--epochs 8] [--qualities 50 30] [--per-class 0]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

from core.settings import Settings, get_settings
from pipelines.data.sample import sample_hashes
from pipelines.images.decode import ImageSet, stratified_sample
from pipelines.models.predict import accuracy, predict_proba
from pipelines.training.scratch import fit_from_scratch, sample_holdout, source_images

EXCLUDED_CLASS = "truck"


def quantisation_scale(quality: int) -> float:
    """libjpeg's multiplier of its base quantisation tables at ``quality``."""
    return (200 - 2 * quality) / 100 if quality >= 50 else 50 / quality


def load_data(settings: Settings, per_class: int) -> tuple[ImageSet, ImageSet]:
    """The built-in model's training images (as `refit train bootstrap --exclude-class truck
    --exclude-sample` reads them), optionally ``per_class`` of each, and the embedded
    holdout."""
    size = (settings.architecture.input_size,) * 2
    excluded = sample_hashes(settings.sample_archive)
    images, _ = source_images(
        settings.cifar10_archive, settings.staging_dir, settings.ingest, size,
        {EXCLUDED_CLASS}, excluded,
    )  # fmt: skip
    if per_class:
        images = images.take(stratified_sample(images.y, per_class * len(images.class_names), 0))
    return images, sample_holdout(settings.sample_archive, images.class_names, size)


def reencode(images: ImageSet, quality: int) -> ImageSet:
    """The same images saved once more as JPEG at ``quality`` (PIL: 4:2:0 chroma)."""
    out = np.empty_like(images.x)
    for i, image in enumerate(images.x):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return ImageSet(out, images.y, images.class_names)


def run(settings: Settings, images: ImageSet, holdout: ImageSet, epochs: int, label: str) -> dict:
    """One short bootstrap (the built-in model's recipe and split); accuracies of the result."""
    print(f"\n{label}")
    config = settings.train.model_copy(update={"epochs": epochs})
    loaded, _ = fit_from_scratch(images, settings.architecture, config, progress=print)
    return {
        "val": loaded.card["val_accuracy"],
        "holdout": accuracy(predict_proba(loaded.model, holdout.x), holdout.y),
        "holdout_tta": accuracy(predict_proba(loaded.model, holdout.x, tta=True), holdout.y),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--qualities", type=int, nargs="+", default=[50, 30])
    parser.add_argument("--per-class", type=int, default=0, help="0: every image")
    args = parser.parse_args()
    settings = get_settings()
    images, holdout = load_data(settings, args.per_class)
    print(f"{len(images)} images (training + validation), {len(holdout)} holdout images")
    rows = [(75, run(settings, images, holdout, args.epochs, "as shipped (q75)"))]
    for quality in args.qualities:
        sets = [reencode(s, quality) for s in (images, holdout)]
        rows.append((quality, run(settings, *sets, args.epochs, f"q{quality}")))
    base = rows[0][1]
    print(f"\n{args.epochs}-epoch bootstrap runs, images re-encoded as JPEG at each quality")
    print(f"{'quality':<18}{'scale':>7}{'val':>8}{'holdout':>9}{'TTA':>8}{'holdout - base':>16}")
    for quality, r in rows:
        name = f"{quality} (as shipped)" if quality == 75 else str(quality)
        print(
            f"{name:<18}{quantisation_scale(quality):>7.2f}{r['val']:>8.2%}{r['holdout']:>9.2%}"
            f"{r['holdout_tta']:>8.2%}{100 * (r['holdout'] - base['holdout']):>+15.2f}p"
        )
    for quality, r in rows[1:]:
        per_unit = [
            100 * (base[k] - r[k]) / (quantisation_scale(quality) - 0.5) for k in ("val", "holdout")
        ]
        print(
            f"q{quality}: {per_unit[0]:.1f} (val) / {per_unit[1]:.1f} (holdout) points per unit "
            f"of scale; lossless -> q75 estimated at {per_unit[0] / 2:.1f} / {per_unit[1] / 2:.1f}"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("jpeg"):
        main()
