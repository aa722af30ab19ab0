"""The gate: decide whether a challenger may replace the champion, and say why.

Both are evaluated on the same holdout images. Same classes: the challenger's accuracy must
reach the champion's plus ``min_delta``, and no class's recall may drop by more than
``max_recall_drop``. New classes: the comparison is on the old classes only (old-class
accuracy may drop at most ``max_old_accuracy_drop``), and each new class needs recall of at
least ``new_class_min_recall``. No champion yet: only the absolute floor ``min_accuracy``
applies, and the decision says there was no baseline. Every check is kept with its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.policies import GatePolicy
from pipelines.models.evaluate import Evaluation, accuracy_on


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    """The gate's verdict with every check behind it."""

    passed: bool
    baseline: str  # "champion v3" or "no baseline"
    checks: list[Check] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [f"{'pass' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def markdown(self) -> str:
        verdict = "**blessed**: promote" if self.passed else "**not blessed**: keep the champion"
        rows = "\n".join(
            f"| {'✅' if c.passed else '❌'} | `{c.name}` | {c.detail} |" for c in self.checks
        )
        new = f"\n\nNew classes: {', '.join(self.new_classes)}" if self.new_classes else ""
        return (
            f"### Gate decision: {verdict}\n\nBaseline: {self.baseline}{new}\n\n"
            f"| | check | detail |\n|---|---|---|\n{rows}\n"
        )


def _floor(challenger: Evaluation, policy: GatePolicy) -> Check:
    return Check(
        "min_accuracy",
        challenger.accuracy >= policy.min_accuracy,
        f"accuracy {challenger.accuracy:.4f} vs floor {policy.min_accuracy:.4f}",
    )


def _same_classes(challenger: Evaluation, champion: Evaluation, policy: GatePolicy) -> list[Check]:
    needed = champion.accuracy + policy.min_delta
    checks = [
        Check(
            "accuracy_vs_champion",
            challenger.accuracy >= needed,
            f"challenger {challenger.accuracy:.4f} vs champion {champion.accuracy:.4f} "
            f"+ min_delta {policy.min_delta:.4f}",
        )
    ]
    drops = {
        name: champion.recall(name) - challenger.recall(name)
        for name in champion.per_class
        if name in challenger.per_class
    }
    worst = max(drops, key=drops.get) if drops else None
    too_big = sorted(n for n, d in drops.items() if d > policy.max_recall_drop)
    detail = (
        f"largest recall drop {drops[worst]:+.4f} ({worst}) vs tolerance "
        f"{policy.max_recall_drop:.4f}"
        if worst
        else "no shared classes"
    )
    if too_big:
        detail += f"; too large for {', '.join(too_big)}"
    checks.append(Check("per_class_recall", not too_big, detail))
    return checks


def _new_classes(
    challenger: Evaluation, champion: Evaluation, new: list[str], policy: GatePolicy
) -> list[Check]:
    old = [c for c in champion.class_names if c in champion.per_class]
    old_after = accuracy_on(challenger, old)
    checks = [
        Check(
            "old_class_accuracy",
            old_after >= champion.accuracy - policy.max_old_accuracy_drop,
            f"challenger {old_after:.4f} on old classes vs champion {champion.accuracy:.4f} "
            f"- tolerance {policy.max_old_accuracy_drop:.4f}",
        )
    ]
    for name in new:
        recall = challenger.recall(name) if name in challenger.per_class else 0.0
        checks.append(
            Check(
                f"new_class_recall.{name}",
                recall >= policy.new_class_min_recall,
                f"recall {recall:.4f} vs floor {policy.new_class_min_recall:.4f}",
            )
        )
    return checks


def decide(
    challenger: Evaluation,
    champion: Evaluation | None,
    policy: GatePolicy,
    champion_label: str = "champion",
) -> Decision:
    """Bless or refuse the challenger.

    Args:
        challenger: the challenger's evaluation on the holdout (all its classes).
        champion: the champion's evaluation on the same images of its classes, or None if
            there is no champion yet.
        policy: thresholds.
        champion_label: how the baseline is named in the decision (e.g. "champion v3").
    """
    checks = [_floor(challenger, policy)]
    if champion is None:
        return Decision(checks[0].passed, "no baseline", checks)
    new = [c for c in challenger.class_names if c not in champion.class_names]
    if new:
        checks += _new_classes(challenger, champion, new, policy)
    else:
        checks += _same_classes(challenger, champion, policy)
    return Decision(all(c.passed for c in checks), champion_label, checks, new)
