"""Benchmark: does the label queue find what the champion has never seen? (issue 38, part 1)

On the embedded CIFAR-10 sample (``samples/cifar10-sample.tar.gz``), whose holdout and
incoming images the built-in model never trained on: its ``seed/train`` images (500 per
known class, no trucks) are the champions' training data, and the rest (256 per known
class, 700 trucks) the images a stream is drawn from. Embeddings are computed once: the
ImageNet MobileNetV2 embedding (``pipelines.models.embedding``, 32 px images enlarged
inside) and the features of two 9-class champions that never saw ``truck``: the built-in
model (competent, 91% validation) and a weak one trained here on 50 images per class. Each
of ``--seeds`` seeds draws a training sample (100 per known class, what a registered
version keeps, none of the weak one's 50) and a stream of 200 images per class, trucks
included (10% of the stream). Measured per seed, then the mean with a 95% t-interval over
the seeds:

- the unseen class's share of the ``B`` most novel images (budgets 50/100/200/400), as a
  multiple of its share in the stream (random choice: 1x), for the old centroid novelty and
  the relative-density novelty (``pipelines.loop.novelty``) on each embedding, and random;
- "more like these": of the 50 stream images most like 5 random trucks, the share that are
  trucks (precision at 50), on each embedding, by similarity to the seeds and by Refit's
  classifier (the seeds against the training sample, ``novelty.more_like``);
- the time to rank 10,000 logged images (relative density on the 1,280-wide embedding).

Target: the unseen class's share >= 3x random's; "more like these" precision >= 0.8.
Accuracy gained per label (fine-tuning on the picks) is ``bench/loop.py``'s.

Run: .venv/bin/python bench/picks.py  (about 3 min on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from core.policies import ArchitectureConfig, TrainConfig
from core.settings import get_settings
from pipelines.images.decode import ImageSet
from pipelines.loop.features import TrainingFeatures, features_and_probs
from pipelines.loop.novelty import more_like, novelty, unit
from pipelines.models.imagenet import imagenet_embedding
from pipelines.models.modelfile import load_refit_model
from pipelines.training.scratch import fit_from_scratch

BUDGETS = (50, 100, 200, 400)
WEAK_FROM, STREAM = 50, 200  # the weak champion's images per class; the stream's


def centroid_novelty(features: np.ndarray, reference: TrainingFeatures) -> np.ndarray:
    """The queue's novelty before relative density (the baseline): distance to the nearest
    training class centroid over the 95th percentile of training images' own distances."""
    centroids = unit(np.nan_to_num(reference.centroids()))
    own = 1 - (unit(reference.features) * centroids[reference.labels]).sum(1)
    scale = max(float(np.percentile(own, 95)), 1e-6)
    return (1 - (unit(features) @ centroids.T).max(1)) / scale


def interval(values: list[float]) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return f"{values.mean():.2f}"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():.2f} [{values.mean() - half:.2f}, {values.mean() + half:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    settings = get_settings()
    trained = read_cifar(settings.sample_archive, under=("seed/train/",))
    unseen = read_cifar(settings.sample_archive, under=("seed/holdout/", "incoming/"))
    names = [*trained.class_names, "truck"]
    pool = ImageSet.concat([trained.relabel(names), unseen.relabel(names)])
    from_training = np.arange(len(pool)) < len(trained)
    truck = pool.class_names.index("truck")
    known = [c for c in pool.class_names if c != "truck"]
    position = np.zeros(len(pool), int)  # each training image's index within its class
    for k in range(len(known)):
        position[(pool.y == k) & from_training] = np.arange(((pool.y == k) & from_training).sum())

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        embedding = imagenet_embedding(Path(cache), 32, progress=lambda m: None)
        views = {"imagenet": embedding(pool.x)}
    print(f"ImageNet embedding of {len(pool)} images: {time.perf_counter() - started:.0f} s")
    builtin = load_refit_model(settings.builtin_model)
    first = from_training & (position < WEAK_FROM)
    weak, _ = fit_from_scratch(
        ImageSet(pool.x[first], pool.y[first], known),
        ArchitectureConfig(input_size=32, widths=(32, 64, 64)),
        TrainConfig(epochs=8, batch_size=128, val_share=0.1, patience=0),
        progress=lambda m: None,
    )
    champions = {"built-in": builtin, "weak": weak}
    outputs = {name: features_and_probs(c.model, pool.x) for name, c in champions.items()}
    for name, (probs, feats) in outputs.items():
        views[name] = feats
        judged = ~from_training & (pool.y != truck)
        right = probs[judged].argmax(1) == pool.y[judged]
        print(f"{name} champion: {right.mean():.1%} on the unseen images of known classes")

    share_rows: dict[tuple, list[float]] = {}
    precision: dict[tuple, list[float]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        train = np.concatenate([
            rng.choice(np.flatnonzero((pool.y == k) & from_training & (position >= WEAK_FROM)),
                       100, replace=False)
            for k in range(len(known))
        ])  # fmt: skip
        stream = np.concatenate([
            rng.choice(np.flatnonzero((pool.y == k) & ~from_training), STREAM, replace=False)
            for k in range(len(pool.class_names))
        ])  # fmt: skip
        is_truck = pool.y[stream] == truck
        base = is_truck.mean()

        orders = {("random", ""): rng.permutation(len(stream))}
        for name in champions:
            reference = TrainingFeatures(
                views[name][train], pool.y[train], outputs[name][0][train], known
            )
            far = centroid_novelty(views[name][stream], reference)
            orders[("centroid distance (before)", name)] = np.argsort(-far, kind="stable")
        for name, view in views.items():
            orders[("relative density", name)] = novelty(view[stream], view[train]).order()
        for key, order in orders.items():
            for budget in BUDGETS:
                found = float(is_truck[order[:budget]].mean() / base)
                share_rows.setdefault((*key, budget), []).append(found)
        seeds = rng.choice(np.flatnonzero(is_truck), 5, replace=False)
        for name, view in views.items():
            for how, known_rows in (("similarity", None), ("classifier", view[train])):
                picked, _ = more_like(view[stream], view[stream][seeds], 50, seeds, known_rows)
                precision.setdefault((name, how), []).append(float(is_truck[picked].mean()))

    big = np.resize(views["imagenet"], (10_000, views["imagenet"].shape[1]))
    big = big + np.random.default_rng(0).normal(0, 1e-3, big.shape).astype(np.float32)
    started = time.perf_counter()
    novelty(big, views["imagenet"][:1000])
    rank_s = time.perf_counter() - started

    print(f"\n{args.seeds} seeds; stream {STREAM * 10:,} images the built-in model never "
          "trained on, 10% trucks; mean [95% interval]\n")  # fmt: skip
    print("| novelty | embedding | " + " | ".join(f"top {b}" for b in BUDGETS) + " |")
    print("| --- | --- |" + " --- |" * len(BUDGETS))
    for method, name in dict.fromkeys(k[:2] for k in share_rows):
        cells = [interval(share_rows[(method, name, b)]) + "x" for b in BUDGETS]
        print(f"| {method} | {name or '-'} | " + " | ".join(cells) + " |")
    print("\n| more like these (5 trucks -> 50 best): precision at 50 | by similarity "
          "| by the classifier |\n| --- | --- | --- |")  # fmt: skip
    for name in views:
        cells = [interval(precision[(name, how)]) for how in ("similarity", "classifier")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nRanking 10,000 logged images against 1,000 training images (1,280 wide): "
          f"{rank_s:.2f} s. Targets: unseen share >= 3x random; precision >= 0.8; "
          "ranking < 2 s.")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cifar import read_cifar
    from bench.results import recorded

    with recorded("picks"):
        main()
