"""Figures of an evaluation, with class names: both confusion matrices (counts and
normalised by true class), a reliability diagram, the most confidently misclassified images
and the training curves. Logged beside every candidate's run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.models.evaluate import CALIBRATION_BINS, Evaluation, calibration_bins

if TYPE_CHECKING:
    from pipelines.images.decode import ImageSet


def _confusion_figure(evaluation: Evaluation, normalised: bool, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(evaluation.confusion, dtype=float)
    if normalised:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(evaluation.class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), evaluation.class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), evaluation.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            text = f"{matrix[i, j]:.2f}" if normalised else f"{int(matrix[i, j])}"
            colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    kind = "normalised by true class" if normalised else "counts"
    ax.set_title(f"Confusion matrix ({kind}), accuracy {evaluation.accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _calibration_figure(probs: np.ndarray, y: np.ndarray, ece: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = calibration_bins(probs, y)
    centres, accuracies = [b[0] for b in bins], [b[2] for b in bins]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(
        centres,
        accuracies,
        width=1 / CALIBRATION_BINS,
        edgecolor="black",
        alpha=0.7,
        label="accuracy per confidence bin",
    )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _worst_figure(
    images: ImageSet, probs: np.ndarray, class_names: list[str], path: Path, count: int = 16
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != images.y)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    columns = 4
    rows = max(1, int(np.ceil(len(worst) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), worst, strict=False):
        ax.imshow(images.x[i])
        ax.set_title(
            f"true {class_names[images.y[i]]}\npred {class_names[predicted[i]]} "
            f"{probs[i, predicted[i]]:.2f}",
            fontsize=8,
        )
    fig.suptitle("Most confident mistakes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(
    evaluation: Evaluation, probs: np.ndarray, holdout: ImageSet, out_dir: Path, prefix: str = ""
) -> list[Path]:
    """Confusion matrices (PNG + JSON), reliability diagram and worst-mistakes grid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = holdout.relabel(evaluation.class_names)
    (out_dir / f"{prefix}confusion.json").write_text(
        json.dumps(
            {"class_names": evaluation.class_names, "counts": evaluation.confusion}, indent=1
        )
    )
    return [
        out_dir / f"{prefix}confusion.json",
        _confusion_figure(evaluation, False, out_dir / f"{prefix}confusion_counts.png"),
        _confusion_figure(evaluation, True, out_dir / f"{prefix}confusion_normalised.png"),
        _calibration_figure(probs, images.y, evaluation.ece, out_dir / f"{prefix}calibration.png"),
        _worst_figure(
            images, probs, evaluation.class_names, out_dir / f"{prefix}worst_mistakes.png"
        ),
    ]


def curves_figure(curves: dict[str, list[float]], path: Path) -> Path:
    """Training curves (loss and accuracy per epoch, one line per series)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, values in sorted(curves.items()):
        ax = axes[0] if name.endswith("loss") else axes[1]
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    for ax, title in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
