"""Evaluation metrics on hand-made predictions whose right answers are known, and the
champion/challenger summary built from two evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.models.evaluate import accuracy_on, expected_calibration_error, metrics_from_probs

CLASSES = ["cat", "dog", "ship"]


def test_accuracy_f1_recall_and_confusion_match_a_hand_count() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 2, 0])  # one cat as dog, one ship as cat
    probs = np.eye(3)[predicted] * 0.7 + 0.1
    found = metrics_from_probs(probs, y, CLASSES)
    assert found.accuracy == pytest.approx(6 / 8)
    assert found.per_class["cat"]["recall"] == pytest.approx(3 / 4)
    assert found.per_class["cat"]["precision"] == pytest.approx(3 / 4)
    assert found.per_class["ship"]["recall"] == pytest.approx(1 / 2)
    assert found.per_class["dog"]["support"] == 2
    assert found.confusion == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1 = [2 * 0.75 * 0.75 / 1.5, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert found.macro_f1 == pytest.approx(np.mean(f1))
    assert found.top_k == 3 and found.top_k_accuracy == 1.0


def test_top_k_counts_the_true_class_among_the_k_best() -> None:
    four = ["a", "b", "c", "d"]
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    found = metrics_from_probs(probs, np.array([0, 0]), four)
    assert found.top_k == 3 and found.top_k_accuracy == pytest.approx(0.5)


def test_calibration_error_is_zero_when_confidence_equals_accuracy() -> None:
    # 10 images at confidence 0.8, 8 of them right: perfectly calibrated.
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-9)
    # Same confidence, all wrong: the gap is the whole confidence.
    assert expected_calibration_error(probs, np.ones(10, int)) == pytest.approx(0.8)


def test_old_class_accuracy_counts_a_new_class_guess_as_a_mistake() -> None:
    names = ["cat", "dog", "truck"]
    y = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 2, 1, 1, 2, 2])  # one cat called truck
    found = metrics_from_probs(np.eye(3)[predicted], y, names)
    assert accuracy_on(found, ["cat", "dog"]) == pytest.approx(3 / 4)
    assert accuracy_on(found, ["truck"]) == 1.0
    assert np.isnan(accuracy_on(found, ["ship"]))


def test_the_comparison_reads_old_and_new_classes_from_the_two_evaluations() -> None:
    from core.policies import GatePolicy
    from pipelines.judge.candidate import Assessment
    from pipelines.judge.gate import Answers, decide

    names = ["cat", "dog", "truck"]
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    challenger = metrics_from_probs(np.eye(3)[[0, 2, 1, 1, 2, 2, 2, 0]], y, names)
    champion = metrics_from_probs(np.eye(2)[[0, 0, 1, 0]], y[:4], names[:2])
    answers = Answers(
        np.array(names)[y[:4]], np.array([1, 1, 1, 0], bool), np.array([1, 0, 1, 1], bool)
    )
    decision = decide(challenger, champion, GatePolicy(), "champion v1", answers)
    summary = Assessment(None, challenger, None, champion, None, "1", decision).summary()
    assert summary == {
        "old_class_accuracy_before": 0.75,
        "old_class_accuracy_after": 0.75,
        "all_class_accuracy_after": 0.75,
        "new_class_recall": {"truck": 0.75},
        "images": 8,
    }
