"""Benchmark: training throughput of Refit's pipeline vs a bare `model.fit` (same run).

Both train the same architecture on the same decoded CIFAR-10 images with the same batch
size, optimizer and loss. The bare baseline feeds the float array straight to
`model.fit`; the pipeline adds what it really does (tf.data shuffle, random-crop + flip
augmentation, one-cycle LR callback, per-epoch progress). Target: pipeline >= 0.9x.

Run: .venv/bin/python bench/train.py [--images 10000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from pipelines.architectures import build_model
from pipelines.train import fit, load_images
from refit.settings import Settings


def cifar_subset(n: int) -> tuple:
    settings = Settings()
    tmp = tempfile.mkdtemp(prefix="refit-bench-train-")
    subprocess.run(["tar", "-xzf", str(settings.cifar10_archive), "-C", tmp], check=True)
    root = Path(tmp) / "train"
    classes = sorted(p.name for p in root.iterdir())
    paths = [p for c in classes for p in sorted((root / c).iterdir())[: n // len(classes)]]
    images = load_images(paths, [p.parent.name for p in paths], classes, (32, 32))
    return images, settings


def bare_fit(images, spec, batch: int, epochs: int) -> float:
    model = build_model(spec, len(images.class_names), init_images=images.x)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
        metrics=["accuracy"],
    )
    x = images.x.astype(np.float32)
    y = np.eye(len(images.class_names), dtype=np.float32)[images.y]
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing, allocation
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    return epochs * len(x) / (time.perf_counter() - start)


def pipeline_fit(images, spec, batch: int, epochs: int) -> float:
    model = build_model(spec, len(images.class_names), init_images=images.x)
    common = dict(
        batch_size=batch,
        peak_lr=0.1,
        warmup_share=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        label_smoothing=0.2,
        budget_s=1e9,
        seed=0,
        patience=None,
        progress=lambda m: None,
        label="bench",
    )
    fit(model, images, None, epochs=1, **common)  # warm-up, as for the baseline
    result = fit(model, images, None, epochs=epochs, **common)
    return epochs * len(images) / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    images, settings = cifar_subset(args.images)
    spec, batch = settings.architecture, settings.train.batch_size
    baseline = bare_fit(images, spec, batch, args.epochs)
    ours = pipeline_fit(images, spec, batch, args.epochs)
    print(
        f"\nTraining throughput, {spec.name} widths {spec.widths}, batch {batch}, "
        f"{len(images):,} CIFAR-10 images x {args.epochs} epochs"
    )
    print(f"{'run':<52}{'images/s':>10}{'x baseline':>12}")
    print(f"{'baseline: bare model.fit on a float array':<52}{baseline:>10,.0f}{1.0:>12.2f}")
    print(
        f"{'refit pipeline (tf.data + augmentation + callbacks)':<52}{ours:>10,.0f}"
        f"{ours / baseline:>12.2f}"
    )


if __name__ == "__main__":
    main()
