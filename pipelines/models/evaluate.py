"""Evaluate: a model's metrics on held-out images, computed once for everyone (the gate,
the model cards of models trained from scratch, the DVC `evaluate` stage).

Accuracy, top-k accuracy, macro-F1, per-class precision/recall/F1 (scikit-learn), the
confusion matrix, and calibration (expected calibration error).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
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
            f"{prefix}images": float(self.images),
        }
        for name, values in self.per_class.items():
            for key in ("precision", "recall", "f1", "support"):
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


def accuracy_on(evaluation: Evaluation, classes: list[str]) -> float:
    """Accuracy over the images whose true class is in ``classes`` (predictions over all
    outputs, so predicting a new class for an old image counts as a mistake)."""
    matrix = np.array(evaluation.confusion)
    rows = [evaluation.class_names.index(c) for c in classes if c in evaluation.class_names]
    total = matrix[rows].sum()
    return float(matrix[rows, rows].sum() / total) if total else float("nan")


def holdout_card(loaded: LoadedModel, holdout: ImageSet) -> dict[str, object]:
    """The numbers a model card keeps of a holdout: images, accuracy with and without flip
    TTA, recall per class."""
    plain, _ = evaluate(loaded, holdout)
    flipped, _ = evaluate(loaded, holdout, tta=True)
    return {
        "images": plain.images,
        "accuracy": round(plain.accuracy, 4),
        "accuracy_tta": round(flipped.accuracy, 4),
        "recall": {name: round(plain.recall(name), 4) for name in plain.per_class},
    }
