"""Benchmark: a new classifier on a pretrained backbone vs Refit's from-scratch net (issue 37).

On CIFAR-10 from the shared tarball: a fixed holdout of ``--holdout`` images per class (the
first ones in the tarball) and ``--per-class`` training images of each class (the next
ones). For each training size, on the same images:

- **from scratch**: Refit's default net (airbench, 32 px) with the default recipe;
- **probe**: a plain logistic regression (scikit-learn) on the MobileNetV2 ImageNet
  features at 224 px, no fine-tuning: the bar a recipe must clear to be worth having;
- **pretrained**: Refit's recipe (``architecture.name = mobilenet_v2``, ``weights =
  imagenet``): the head on the trunk's features computed once, then the top layers.

Accuracy on the holdout with its 95% interval (Wilson), the paired differences on the same
images (McNemar's exact test), wall time of each, and the trunk's time per image. One run
(seed 0): the holdout's intervals are the uncertainty shown. Targets: pretrained >= 72% at
100 per class, in <= 3 minutes on 2 cores.

Run: .venv/bin/python bench/pretrained.py  (about 15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from core.policies import ArchitectureConfig, TrainConfig
from core.settings import get_settings
from pipelines.images.decode import ImageSet
from pipelines.models.predict import outputs, predict_proba
from pipelines.training.architectures import build_model
from pipelines.training.scratch import fit_from_scratch

QUIET = {"progress": lambda message: None}
PRETRAINED = ArchitectureConfig(name="mobilenet_v2", weights="imagenet", input_size=32)


def split(images: ImageSet, per_class: int, holdout: int) -> tuple[ImageSet, ImageSet]:
    """``per_class`` training images of each class, and the first ``holdout`` of each (the
    same holdout whatever the training size)."""
    train, held = [], []
    for k in range(len(images.class_names)):
        of_class = np.flatnonzero(images.y == k)
        held += list(of_class[:holdout])
        train += list(of_class[holdout : holdout + per_class])
    return images.take(np.array(train)), images.take(np.array(held))


def interval(correct: np.ndarray) -> str:
    low, high = proportion_confint(correct.sum(), len(correct), alpha=0.05, method="wilson")
    return f"{correct.mean():.1%} [{low:.1%}, {high:.1%}]"


def probe(train: ImageSet, held: ImageSet, weights_dir: Path):
    """(right or wrong on each holdout image, seconds, seconds per image of features):
    logistic regression (scikit-learn's defaults) on the trunk's pooled features."""
    started = time.perf_counter()
    model = build_model(PRETRAINED, 10, weights_dir=weights_dir, **QUIET)
    trunk = keras.Model(model.inputs, model.get_layer("pool").output)
    t0 = time.perf_counter()
    f_train, f_held = outputs(trunk, train.x, 64), outputs(trunk, held.x, 64)
    per_image = (time.perf_counter() - t0) / (len(train) + len(held))
    classifier = LogisticRegression(max_iter=2000, C=1.0).fit(f_train, train.y)
    return classifier.predict(f_held) == held.y, time.perf_counter() - started, per_image


def trained(spec: ArchitectureConfig, train: ImageSet, held: ImageSet, weights_dir: Path):
    started = time.perf_counter()
    loaded, _ = fit_from_scratch(train, spec, TrainConfig(), weights_dir=weights_dir, **QUIET)
    seconds = time.perf_counter() - started
    return np.argmax(predict_proba(loaded.model, held.x), axis=1) == held.y, seconds


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """a's accuracy minus b's on the same images, with McNemar's exact test."""
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    return f"{a.mean() - b.mean():+.1%} (McNemar p = {mcnemar(table, exact=True).pvalue:.2g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[50, 100, 500])
    parser.add_argument("--holdout", type=int, default=200, help="Holdout images per class.")
    args = parser.parse_args()
    images = read_cifar(get_settings().cifar10_archive, max(args.per_class) + args.holdout)
    rows = []
    with tempfile.TemporaryDirectory() as weights_dir:
        for n in args.per_class:
            train, held = split(images, n, args.holdout)
            scratch_acc, scratch_s = trained(ArchitectureConfig(), train, held, Path(weights_dir))
            probe_acc, probe_s, per_image = probe(train, held, Path(weights_dir))
            pre_acc, pre_s = trained(PRETRAINED, train, held, Path(weights_dir))
            rows.append((n, scratch_acc, scratch_s, probe_acc, probe_s, pre_acc, pre_s, per_image))
            print(f"{n}/class: scratch {scratch_acc.mean():.3f} ({scratch_s:.0f} s), probe "
                  f"{probe_acc.mean():.3f} ({probe_s:.0f} s), pretrained {pre_acc.mean():.3f} "
                  f"({pre_s:.0f} s)", flush=True)  # fmt: skip
    h = len(held)
    print("\n| per class | from scratch (airbench) | probe: logistic on MobileNetV2 features "
          "| pretrained recipe (mobilenet_v2, imagenet) | recipe vs probe | recipe vs scratch |"
          "\n| --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for n, sa, ss, pa, ps, ra, rs, _ in rows:
        print(
            f"| {n} | {interval(sa)}, {ss:.0f} s | {interval(pa)}, {ps:.0f} s "
            f"| {interval(ra)}, {rs:.0f} s | {paired(ra, pa)} | {paired(ra, sa)} |"
        )
    print(
        f"\nHoldout: {h} images ({args.holdout} per class); trunk features at 224 px: "
        f"{np.median([r[-1] for r in rows]) * 1000:.1f} ms per image. Targets: pretrained "
        f">= 72% at 100 per class in <= 180 s."
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cifar import read_cifar
    from bench.results import recorded

    with recorded("pretrained"):
        main()
