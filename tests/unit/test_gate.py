"""The gate's policy on crafted predictions: pass, fail on accuracy, fail on one class's
recall, the new-class path and the first run without a baseline."""

from __future__ import annotations

import numpy as np
import pytest

from core.policies import GatePolicy
from pipelines.judge.gate import decide
from pipelines.models.evaluate import EvaluationError, check_coverage, metrics_from_probs

POLICY = GatePolicy(
    min_delta=0.0,
    max_recall_drop=0.05,
    max_old_accuracy_drop=0.02,
    new_class_min_recall=0.8,
    min_accuracy=0.5,
)
OLD = ["cat", "dog", "ship"]


def evaluation(y: np.ndarray, predicted: np.ndarray, classes: list[str]):
    probs = np.full((len(y), len(classes)), 0.1 / max(len(classes) - 1, 1))
    probs[np.arange(len(y)), predicted] = 0.9
    return metrics_from_probs(probs, y, classes)


def labels(per_class: int, classes: int) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def with_errors(y: np.ndarray, wrong: dict[int, int], to: int = 0) -> np.ndarray:
    """Predictions equal to y, except ``wrong[c]`` images of class c predicted as ``to``."""
    predicted = y.copy()
    for c, n in wrong.items():
        idx = np.flatnonzero(y == c)[:n]
        predicted[idx] = to if to != c else (c + 1) % (y.max() + 1)
    return predicted


def test_first_run_uses_the_floor_only() -> None:
    y = labels(20, 3)
    decision = decide(evaluation(y, with_errors(y, {1: 5}), OLD), None, POLICY)
    assert decision.passed and decision.baseline == "no baseline"
    assert [c.name for c in decision.checks] == ["min_accuracy"]
    bad = decide(evaluation(y, with_errors(y, {1: 20, 2: 20}), OLD), None, POLICY)
    assert not bad.passed


def test_better_challenger_passes() -> None:
    y = labels(20, 3)
    champion = evaluation(y, with_errors(y, {1: 4}), OLD)
    challenger = evaluation(y, with_errors(y, {1: 2}), OLD)
    decision = decide(challenger, champion, POLICY, "champion v1")
    assert decision.passed, decision.reasons
    assert decision.baseline == "champion v1"


def test_fails_on_overall_accuracy() -> None:
    y = labels(20, 3)
    champion = evaluation(y, with_errors(y, {1: 1}), OLD)
    challenger = evaluation(y, with_errors(y, {1: 2}), OLD)
    decision = decide(challenger, champion, POLICY)
    assert not decision.passed
    assert [c.name for c in decision.checks if not c.passed] == ["accuracy_vs_champion"]


def test_fails_when_one_class_recall_regresses() -> None:
    y = labels(20, 3)
    champion = evaluation(y, with_errors(y, {1: 4, 2: 4}), OLD)  # dog 0.80, ship 0.80
    challenger = evaluation(y, with_errors(y, {2: 6}), OLD)  # better overall, ship 0.70
    decision = decide(challenger, champion, POLICY)
    assert challenger.accuracy > champion.accuracy
    assert not decision.passed
    failed = [c for c in decision.checks if not c.passed]
    assert [c.name for c in failed] == ["per_class_recall"] and "ship" in failed[0].detail


def test_new_class_path_compares_old_classes_and_needs_new_recall() -> None:
    y_old = labels(20, 3)
    champion = evaluation(y_old, with_errors(y_old, {1: 2}), OLD)  # 0.9667
    y = labels(20, 4)
    good = evaluation(y, with_errors(y, {1: 2, 3: 3}, to=1), [*OLD, "truck"])
    decision = decide(good, champion, POLICY)
    assert decision.passed, decision.reasons
    assert decision.new_classes == ["truck"]
    assert {c.name for c in decision.checks} == {
        "min_accuracy",
        "old_class_accuracy",
        "new_class_recall.truck",
    }
    weak_truck = evaluation(y, with_errors(y, {1: 2, 3: 6}, to=1), [*OLD, "truck"])
    assert not decide(weak_truck, champion, POLICY).passed
    forgetful = evaluation(y, with_errors(y, {0: 4, 1: 2}, to=3), [*OLD, "truck"])
    failed = [c.name for c in decide(forgetful, champion, POLICY).checks if not c.passed]
    assert failed == ["old_class_accuracy"]


def test_decision_markdown_carries_reasons() -> None:
    y = labels(20, 3)
    decision = decide(evaluation(y, y, OLD), evaluation(y, y, OLD), POLICY, "champion v2")
    text = decision.markdown()
    assert "champion v2" in text and "accuracy_vs_champion" in text


def test_empty_holdout_and_uncovered_classes_are_errors() -> None:
    with pytest.raises(EvaluationError, match="empty"):
        metrics_from_probs(np.zeros((0, 3)), np.zeros(0, int), OLD)
    with pytest.raises(EvaluationError, match="truck"):
        check_coverage(OLD, [*OLD, "truck"])
