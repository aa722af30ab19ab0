"""Benchmark: training throughput of Refit's pipeline vs a bare `model.fit` (same run).

Both train the same architecture on the same decoded CIFAR-10 images with the same batch
size, optimizer and loss. The bare baseline feeds the float array straight to
`model.fit`; the pipeline adds what it really does (tf.data shuffle, random-crop + flip
augmentation, one-cycle LR callback, Lookahead weight averaging, per-epoch progress).
Target: pipeline >= 0.9x.
A third row times the pipeline in bfloat16 mixed precision, what bootstrap uses where the
CPU has bf16 instructions (`train.precision=auto`).

Each variant is timed in interleaved rounds and keeps its best, because this shared host's
speed swings by up to 1.6x from one minute to the next.

Run: .venv/bin/python bench/train.py [--images 10000] [--epochs 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from core.settings import get_settings
from pipelines.images.decode import load_images
from pipelines.training.architectures import build_model
from pipelines.training.fit import Recipe, dtype_policy, fit


def cifar_subset(n: int) -> tuple:
    settings = get_settings()
    tmp = tempfile.mkdtemp(prefix="refit-bench-train-")
    subprocess.run(["tar", "-xzf", str(settings.cifar10_archive), "-C", tmp], check=True)
    root = Path(tmp) / "train"
    classes = sorted(p.name for p in root.iterdir())
    paths = [p for c in classes for p in sorted((root / c).iterdir())[: n // len(classes)]]
    images = load_images(paths, [p.parent.name for p in paths], classes, (32, 32))
    return images, settings


def bare_runner(images, spec, batch: int) -> Callable[[int], float]:
    """A compiled model fed a float array; returns a timer: epochs -> images/s."""
    model = build_model(spec, len(images.class_names), init_images=images.x)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
        metrics=["accuracy"],
    )
    x = images.x.astype(np.float32)
    y = np.eye(len(images.class_names), dtype=np.float32)[images.y]
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing, allocation

    def timed(epochs: int) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
        return epochs * len(x) / (time.perf_counter() - start)

    return timed


def pipeline_runner(images, spec, batch: int, precision: str) -> Callable[[int], float]:
    """Refit's ``fit`` (tf.data, augmentation, callbacks); each call compiles and traces
    again, as every real run does once."""
    with dtype_policy(precision):
        model = build_model(spec, len(images.class_names), init_images=images.x)
    recipe = Recipe(
        epochs=1,
        batch_size=batch,
        peak_lr=0.1,
        warmup_share=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        label_smoothing=0.2,
        budget_s=1e9,
        seed=0,
    )
    quiet = lambda m: None  # noqa: E731
    fit(model, images, None, recipe, quiet, "bench")  # warm-up, as for the baseline

    def timed(epochs: int) -> float:
        timed_recipe = replace(recipe, epochs=epochs)
        return epochs * len(images) / fit(model, images, None, timed_recipe, quiet, "bench").seconds

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images, settings = cifar_subset(args.images)
    spec, batch = settings.architecture, settings.train.batch_size
    runners = {
        "baseline: bare model.fit on a float array": bare_runner(images, spec, batch),
        "refit pipeline (tf.data + augmentation + callbacks)": pipeline_runner(
            images, spec, batch, "float32"
        ),
        "refit pipeline, bfloat16 mixed precision": pipeline_runner(
            images, spec, batch, "mixed_bfloat16"
        ),
    }
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):  # interleaved: a slow spell of the host hits every run
        for name, timed in runners.items():
            speeds[name].append(timed(args.epochs))
    best = {name: max(values) for name, values in speeds.items()}
    baseline = next(iter(best.values()))
    print(
        f"\nTraining throughput, {spec.name} widths {spec.widths}, batch {batch}, "
        f"{len(images):,} CIFAR-10 images, best of {args.rounds} interleaved rounds of "
        f"{args.epochs} epoch(s)"
    )
    print(f"{'run':<52}{'images/s':>10}{'x baseline':>12}   all rounds")
    for name, speed in best.items():
        rounds = " ".join(f"{v:,.0f}" for v in speeds[name])
        print(f"{name:<52}{speed:>10,.0f}{speed / baseline:>12.2f}   {rounds}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("train"):
        main()
