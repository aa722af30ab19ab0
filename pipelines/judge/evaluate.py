"""Evaluate: a model's metrics and figures on a dataset version's holdout.

Accuracy, top-k accuracy, macro-F1, per-class precision/recall/F1 (scikit-learn), the
confusion matrix as counts and normalised by true class, and calibration (expected
calibration error). Figures, with class names: both confusion matrices, a reliability
diagram, and a grid of the most confidently misclassified images.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

if TYPE_CHECKING:  # heavy (TensorFlow): imported where used
    from pipelines.images.decode import ImageSet
    from pipelines.models.modelfile import LoadedModel

CALIBRATION_BINS = 10


class EvaluationError(ValueError):
    """The model cannot be evaluated on these images; the message says why."""


@dataclass
class Evaluation:
    """Metrics of one model on one set of held-out images."""

    class_names: list[str]
    images: int
    accuracy: float
    top_k: int
    top_k_accuracy: float
    macro_f1: float
    ece: float
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def recall(self, name: str) -> float:
        return self.per_class[name]["recall"]

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """Scalar metrics for MLflow: overall ones and per-class recall/precision/F1."""
        metrics = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}top{self.top_k}_accuracy": self.top_k_accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}ece": self.ece,
        }
        for name, values in self.per_class.items():
            for key in ("precision", "recall", "f1"):
                metrics[f"{prefix}{key}.{_metric_safe(name)}"] = values[key]
        return metrics


def _metric_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def calibration_bins(probs: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(bin centre, share of images, accuracy, mean confidence) of each non-empty
    equal-width confidence bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = []
    for low, high in itertools.pairwise(np.linspace(0, 1, CALIBRATION_BINS + 1)):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            bins.append(
                (
                    (low + high) / 2,
                    float(in_bin.mean()),
                    float(correct[in_bin].mean()),
                    float(confidence[in_bin].mean()),
                )
            )
    return bins


def expected_calibration_error(probs: np.ndarray, y: np.ndarray) -> float:
    """ECE: the share-weighted gap between accuracy and confidence over the bins."""
    return float(sum(share * abs(acc - conf) for _, share, acc, conf in calibration_bins(probs, y)))


def metrics_from_probs(probs: np.ndarray, y: np.ndarray, class_names: list[str]) -> Evaluation:
    """All metrics from predicted probabilities (N, K) and true labels indexing class_names."""
    if len(y) == 0:
        raise EvaluationError("the holdout is empty: nothing to evaluate on")
    predicted = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    k = min(3, len(class_names))
    top_k = np.argsort(probs, axis=1)[:, -k:]
    present = np.unique(y)
    return Evaluation(
        class_names=list(class_names),
        images=len(y),
        accuracy=float((predicted == y).mean()),
        top_k=k,
        top_k_accuracy=float((top_k == y[:, None]).any(axis=1).mean()),
        macro_f1=float(f1_score(y, predicted, labels=present, average="macro", zero_division=0)),
        ece=expected_calibration_error(probs, y),
        per_class={
            class_names[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in present
        },
        confusion=confusion_matrix(y, predicted, labels=labels).tolist(),
    )


def check_coverage(model_classes: list[str], holdout_classes: list[str]) -> None:
    """Refuse a holdout with classes the model cannot predict."""
    missing = sorted(set(holdout_classes) - set(model_classes))
    if missing:
        raise EvaluationError(
            f"the model cannot predict holdout classes {missing}; it knows {model_classes}"
        )


def evaluate(
    loaded: LoadedModel, holdout: ImageSet, tta: bool = False
) -> tuple[Evaluation, np.ndarray]:
    """Evaluate ``loaded`` on ``holdout``; returns the metrics and the probabilities."""
    from pipelines.models.predict import predict_proba

    present = [holdout.class_names[i] for i in np.unique(holdout.y)]
    check_coverage(loaded.class_names, present)
    images = holdout.relabel(loaded.class_names)
    probs = predict_proba(loaded.model, images.x, tta=tta)
    return metrics_from_probs(probs, images.y, loaded.class_names), probs


# --------------------------------------------------------------------------- figures


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


def accuracy_on(evaluation: Evaluation, classes: list[str]) -> float:
    """Accuracy over the images whose true class is in ``classes`` (predictions over all
    outputs, so predicting a new class for an old image counts as a mistake)."""
    matrix = np.array(evaluation.confusion)
    rows = [evaluation.class_names.index(c) for c in classes if c in evaluation.class_names]
    total = matrix[rows].sum()
    return float(matrix[rows, rows].sum() / total) if total else float("nan")


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
