"""The gate on constructed predictions: its statistics against textbook values, and its
three outcomes (blessed, refused, inconclusive) on the same-class and new-class paths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from core.policies import GatePolicy
from pipelines.judge import stats
from pipelines.judge.gate import Answers, decide
from pipelines.models.evaluate import EvaluationError, check_coverage, metrics_from_probs

POLICY = GatePolicy()
OLD = ["cat", "dog", "ship"]


def evaluation(y: np.ndarray, predicted: np.ndarray, classes: list[str]):
    probs = np.full((len(y), len(classes)), 0.1 / max(len(classes) - 1, 1))
    probs[np.arange(len(y)), predicted] = 0.9
    return metrics_from_probs(probs, y, classes)


def labels(per_class: int, classes: int) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def wrong_at(y: np.ndarray, where: dict[int, slice], to: int = 0) -> np.ndarray:
    """Predictions equal to y, except the images of class c at ``where[c]`` (positions among
    that class's images) predicted as ``to`` (or the next class when ``to`` is c)."""
    predicted = y.copy()
    for c, positions in where.items():
        idx = np.flatnonzero(y == c)[positions]
        predicted[idx] = to if to != c else (c + 1) % (y.max() + 1)
    return predicted


def judge(y, champion_pred, challenger_pred, champion_classes, challenger_classes, policy=POLICY):
    champion_y = y[y < len(champion_classes)]
    champion = evaluation(champion_y, champion_pred[y < len(champion_classes)], champion_classes)
    challenger = evaluation(y, challenger_pred, challenger_classes)
    keep = y < len(champion_classes)
    answers = Answers(
        np.array(challenger_classes)[y[keep]],
        champion_pred[keep] == y[keep],
        challenger_pred[keep] == y[keep],
    )
    return decide(challenger, champion, policy, "champion v1", answers)


# --------------------------------------------------------------------------- statistics


def test_exact_mcnemar_matches_the_binomial_table() -> None:
    right = np.zeros(100, bool)
    champion, challenger = right.copy(), right.copy()
    challenger[:10] = True  # 10 gained
    champion[10:12] = True  # 2 lost
    test = stats.paired(champion, challenger, 0.05)
    assert (test.gains, test.losses, test.n) == (10, 2, 100)
    # P(X >= 10 | X ~ Binomial(12, 1/2)) = (66 + 12 + 1) / 4096
    assert test.p_better == pytest.approx(79 / 4096)
    assert test.p_worse == pytest.approx(1 - 13 / 4096)  # P(X >= 2)
    assert test.difference == pytest.approx(0.08)
    assert test.low < test.difference < test.high


def test_clopper_pearson_bounds_are_the_beta_quantiles() -> None:
    assert stats.lower_bound(17, 20, 0.05) == pytest.approx(beta.ppf(0.05, 17, 4))
    assert stats.upper_bound(17, 20, 0.05) == pytest.approx(beta.ppf(0.95, 18, 3))
    assert stats.lower_bound(0, 0, 0.05) == 0.0


def test_holm_steps_down() -> None:
    assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05) == {
        "a": True,
        "b": False,
        "c": False,
    }


def test_images_needed_grows_as_the_gain_shrinks() -> None:
    big = stats.PairedTest(2000, 80, 40, 0, 0, 1, 1)
    small = stats.PairedTest(2000, 65, 55, 0, 0, 1, 1)
    assert stats.images_needed(big, 0, 0.05) < stats.images_needed(small, 0, 0.05)
    assert stats.images_needed(stats.PairedTest(2000, 40, 60, 0, 0, 1, 1), 0, 0.05) is None


# --------------------------------------------------------------------------- outcomes


def test_first_run_uses_the_floor_only() -> None:
    y = labels(20, 3)
    decision = decide(evaluation(y, wrong_at(y, {1: slice(0, 5)}), OLD), None, POLICY)
    assert decision.passed and decision.baseline == "no baseline"
    assert [c.name for c in decision.checks] == ["min_accuracy"]
    bad = decide(evaluation(y, wrong_at(y, {1: slice(0, 20), 2: slice(0, 20)}), OLD), None, POLICY)
    assert not bad.passed and bad.outcome == "refused"


def test_the_champion_again_is_never_promoted() -> None:
    y = labels(300, 3)
    same = wrong_at(y, {1: slice(0, 40)})
    decision = judge(y, same, same.copy(), OLD, OLD)
    assert decision.outcome == "inconclusive" and not decision.passed
    assert "no gain" in decision.markdown()


def test_a_clearly_better_challenger_is_blessed() -> None:
    y = labels(300, 3)
    champion = wrong_at(y, {0: slice(0, 30), 1: slice(0, 40), 2: slice(0, 30)})
    challenger = wrong_at(y, {0: slice(0, 10), 1: slice(0, 15), 2: slice(0, 10)})
    decision = judge(y, champion, challenger, OLD, OLD)
    assert decision.outcome == "blessed", decision.reasons
    assert decision.metrics()["gate.gains"] == 65 and decision.metrics()["gate.losses"] == 0


def test_a_gain_within_noise_is_inconclusive_and_says_what_would_decide() -> None:
    y = labels(300, 3)
    champion = wrong_at(y, {1: slice(0, 40)})  # 40 wrong
    challenger = wrong_at(y, {1: slice(3, 40), 2: slice(0, 1)})  # 3 gained, 1 lost
    decision = judge(y, champion, challenger, OLD, OLD)
    assert decision.outcome == "inconclusive", decision.reasons
    assert decision.needed and decision.needed > 900
    assert f"{decision.needed:,} holdout images" in decision.markdown()


def test_evidence_of_a_worse_challenger_refuses_it() -> None:
    y = labels(300, 3)
    champion = wrong_at(y, {1: slice(0, 10)})
    challenger = wrong_at(y, {1: slice(0, 10), 0: slice(0, 30)})  # 30 lost
    decision = judge(y, champion, challenger, OLD, OLD)
    assert decision.outcome == "refused"
    failed = [c.name for c in decision.checks if c.state == "fail"]
    assert failed == ["accuracy_vs_champion", "per_class_recall"]


def test_one_class_collapsing_refuses_an_otherwise_better_challenger() -> None:
    y = labels(300, 3)
    champion = wrong_at(y, {0: slice(0, 60), 1: slice(0, 60)})
    challenger = wrong_at(y, {2: slice(0, 40)})  # 120 gained, 40 lost, all in ship
    decision = judge(y, champion, challenger, OLD, OLD)
    assert decision.outcome == "refused"
    recall = next(c for c in decision.checks if c.name == "per_class_recall")
    assert recall.state == "fail" and "ship" in recall.detail
    assert decision.flips == {"cat": (0, 60), "dog": (0, 60), "ship": (40, 0)}
    assert "| ship | 40 | 0 |" in decision.markdown()
    assert decision.metrics()["gate.negative_flip_rate"] == pytest.approx(40 / 900)


def test_the_optional_negative_flip_check_refuses_too_many_changed_answers() -> None:
    y = labels(300, 3)
    champion = wrong_at(y, {0: slice(0, 60), 1: slice(0, 60)})
    challenger = wrong_at(y, {0: slice(60, 80)})  # 120 gained, 20 lost
    assert judge(y, champion, challenger, OLD, OLD).outcome == "blessed"
    strict = GatePolicy(max_negative_flip_rate=0.01)
    decision = judge(y, champion, challenger, OLD, OLD, strict)
    assert decision.outcome == "refused"
    flips = next(c for c in decision.checks if c.name == "negative_flip_rate")
    assert flips.state == "fail" and "20 of 900" in flips.detail


def test_non_inferiority_blesses_a_challenger_no_worse_than_the_margin() -> None:
    y = labels(600, 3)
    champion = wrong_at(y, {1: slice(0, 60)})
    challenger = wrong_at(y, {1: slice(2, 60), 0: slice(0, 2)})  # 2 gained, 2 lost
    assert judge(y, champion, challenger, OLD, OLD).outcome == "inconclusive"
    lenient = GatePolicy(mode="non_inferiority", margin=0.01)
    assert judge(y, champion, challenger, OLD, OLD, lenient).outcome == "blessed"


def test_new_class_path_judges_old_classes_and_the_new_recall_by_bounds() -> None:
    y = labels(200, 4)  # truck is class 3
    champion = wrong_at(y, {1: slice(0, 20)})
    classes = [*OLD, "truck"]
    good = wrong_at(y, {1: slice(0, 22), 3: slice(0, 10)}, to=1)  # truck recall 0.95
    decision = judge(y, champion, good, OLD, classes)
    assert decision.outcome == "blessed", decision.reasons
    assert decision.new_classes == ["truck"]
    assert {c.name for c in decision.checks} == {
        "min_accuracy",
        "old_class_accuracy",
        "new_class_recall.truck",
    }
    borderline = wrong_at(y, {1: slice(0, 22), 3: slice(0, 36)}, to=1)  # 0.82, bound < 0.8
    assert judge(y, champion, borderline, OLD, classes).outcome == "inconclusive"
    weak = wrong_at(y, {1: slice(0, 22), 3: slice(0, 70)}, to=1)  # 0.65: evidence under
    assert judge(y, champion, weak, OLD, classes).outcome == "refused"
    forgetful = wrong_at(y, {0: slice(0, 60), 1: slice(0, 20)}, to=3)
    failed = [
        c.name for c in judge(y, champion, forgetful, OLD, classes).checks if c.state == "fail"
    ]
    assert failed == ["old_class_accuracy"]


def test_a_new_class_without_holdout_images_is_said_not_divided_by_zero() -> None:
    y = labels(200, 3)
    champion = wrong_at(y, {1: slice(0, 20)})
    challenger = evaluation(y, champion.copy(), [*OLD, "truck"])
    answers = Answers(np.array(OLD)[y], champion == y, champion == y)
    decision = decide(challenger, evaluation(y, champion, OLD), POLICY, "v1", answers)
    truck = next(c for c in decision.checks if c.name == "new_class_recall.truck")
    assert truck.state == "inconclusive" and "no holdout image of truck" in truck.detail


def test_decision_markdown_carries_reasons() -> None:
    y = labels(20, 3)
    decision = judge(y, y.copy(), y.copy(), OLD, OLD)
    text = decision.markdown()
    assert "champion v1" in text and "accuracy_vs_champion" in text


def test_empty_holdout_and_uncovered_classes_are_errors() -> None:
    with pytest.raises(EvaluationError, match="empty"):
        metrics_from_probs(np.zeros((0, 3)), np.zeros(0, int), OLD)
    with pytest.raises(EvaluationError, match="truck"):
        check_coverage(OLD, [*OLD, "truck"])
