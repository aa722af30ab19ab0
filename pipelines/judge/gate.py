"""The gate: decide whether a challenger may replace the champion, and say why, with the
evidence (``pipelines.judge.stats``).

Both models answer the same holdout images, so they are compared image by image. Three
outcomes: **blessed** (evidence the challenger is better, or no worse than a stated margin,
as the mode asks), **refused** (evidence it is worse, or a floor missed), **inconclusive**
(neither: the champion stays, and the decision says about how many holdout images would
likely decide it).

- Same classes: the accuracy difference's one-sided lower bound must clear ``min_delta``
  (``superiority``, the default: re-registering the champion's own weights is never
  promoted) or ``-margin`` (``non_inferiority``); a class whose recall dropped, by a
  one-sided exact test with Holm's correction over the classes and by more than
  ``max_recall_drop``, refuses it.
- New classes: the old classes are judged for non-inferiority (the paired difference's
  lower bound above ``-max_old_accuracy_drop``), and each new class's recall by its
  one-sided lower confidence bound against ``new_class_min_recall``.
- Production (``pipelines.judge.shadow``): with at least ``production_min_images`` labelled
  production images kept out of training, evidence the challenger is worse on them (the
  paired difference's upper bound under zero) refuses it.
- No champion yet: only the floor ``min_accuracy`` applies ("no baseline").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.policies import GatePolicy
from pipelines.judge import stats
from pipelines.judge.shadow import Shadow
from pipelines.models.evaluate import Evaluation

PASS, FAIL, UNSURE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # pass | fail (evidence against) | inconclusive
    detail: str

    @property
    def passed(self) -> bool:
        return self.state == PASS


@dataclass(frozen=True)
class Answers:
    """Which holdout images each model got right: the same images, in the same order (the
    images of the champion's classes), with their true class names."""

    labels: np.ndarray  # class name per image
    champion_right: np.ndarray
    challenger_right: np.ndarray

    @property
    def negative_flips(self) -> np.ndarray:
        """Where the champion was right and the challenger is wrong (positions here)."""
        return np.flatnonzero(self.champion_right & ~self.challenger_right)

    def flips(self) -> dict[str, tuple[int, int]]:
        """Per class: (images the challenger lost, images it gained)."""
        lost = self.champion_right & ~self.challenger_right
        gained = self.challenger_right & ~self.champion_right
        return {
            str(name): (
                int(lost[self.labels == name].sum()),
                int(gained[self.labels == name].sum()),
            )
            for name in np.unique(self.labels)
            if (lost | gained)[self.labels == name].any()
        }


@dataclass
class Decision:
    """The gate's verdict with every check behind it."""

    outcome: str  # blessed | refused | inconclusive
    baseline: str  # "champion v3" or "no baseline"
    checks: list[Check] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    comparison: stats.PairedTest | None = None  # challenger vs champion, all shared images
    needed: int | None = None  # images that would likely decide an inconclusive one
    flips: dict[str, tuple[int, int]] = field(default_factory=dict)  # class -> (lost, gained)
    shadow: Shadow | None = None  # both models on production traffic

    @property
    def passed(self) -> bool:
        return self.outcome == "blessed"

    @property
    def reasons(self) -> list[str]:
        return [f"{c.state} {c.name}: {c.detail}" for c in self.checks]

    def markdown(self) -> str:
        verdict = {
            "blessed": "**blessed**: promote",
            "refused": "**refused**: keep the champion",
            "inconclusive": "**inconclusive**: keep the champion",
        }[self.outcome]
        mark = {PASS: "✅", FAIL: "❌", UNSURE: "❔"}
        rows = "\n".join(f"| {mark[c.state]} | `{c.name}` | {c.detail} |" for c in self.checks)
        new = f"\n\nNew classes: {', '.join(self.new_classes)}" if self.new_classes else ""
        more = ""
        if self.outcome == "inconclusive":
            more = (
                f"\n\nAbout {self.needed:,} holdout images would likely decide it."
                if self.needed
                else "\n\nThe challenger shows no gain here: more images would not likely bless it."
            )
        return (
            f"### Gate decision: {verdict}\n\nBaseline: {self.baseline}{new}{more}\n\n"
            f"| | check | detail |\n|---|---|---|\n{rows}\n{self._flips_markdown()}"
            f"{self._shadow_markdown()}"
        )

    def html(self, flips_png: bytes | None = None) -> str:
        """The decision as one self-contained page (``report.html`` in the candidate's
        run): its text and the negative flips' thumbnail grid inline."""
        import base64
        import html

        grid = ""
        if flips_png:
            data = base64.b64encode(flips_png).decode()
            grid = (
                "<h2>Negative flips</h2><p>Holdout images the champion got right and the "
                "challenger gets wrong (true class &gt; challenger's answer).</p><img alt=\""
                f'negative flips" src="data:image/png;base64,{data}">'
            )
        return (
            '<!doctype html><html lang="en"><meta charset="utf-8"><title>Gate decision</title>'
            f"<body><pre>{html.escape(self.markdown())}</pre>{grid}</body></html>\n"
        )

    def _shadow_markdown(self) -> str:
        if self.shadow is None:
            return ""
        return f"\nProduction traffic (shadow check): {self.shadow.summary()}.\n"

    def _flips_markdown(self) -> str:
        """What changed, image by image: per class, the images lost and gained."""
        if not self.flips:
            return ""
        rows = "\n".join(
            f"| {name} | {lost} | {gained} |" for name, (lost, gained) in sorted(self.flips.items())
        )
        return (
            "\nWhat changed (images the champion got right and the challenger gets wrong, and "
            f"the reverse):\n\n| class | lost | gained |\n|---|---|---|\n{rows}\n"
        )

    def metrics(self) -> dict[str, float]:
        """The paired comparison's numbers, for the candidate's MLflow run."""
        test = self.comparison
        found = self.shadow.metrics() if self.shadow is not None else {}
        if test is None:
            return found
        return found | {
            "gate.difference": test.difference,
            "gate.difference_low": test.low,
            "gate.difference_high": test.high,
            "gate.p_better": test.p_better,
            "gate.p_worse": test.p_worse,
            "gate.gains": float(test.gains),
            "gate.losses": float(test.losses),
            "gate.negative_flip_rate": test.losses / test.n if test.n else 0.0,
        }


def _floor(challenger: Evaluation, policy: GatePolicy) -> Check:
    passed = challenger.accuracy >= policy.min_accuracy
    return Check(
        "min_accuracy",
        PASS if passed else FAIL,
        f"accuracy {challenger.accuracy:.4f} vs floor {policy.min_accuracy:.4f}",
    )


def _difference(name: str, test: stats.PairedTest, bar: float, what: str) -> Check:
    """The difference's lower bound must clear ``bar``; its upper bound under it (or, for a
    superiority bar, under zero) is evidence against."""
    state = PASS if test.low > bar else FAIL if test.high < min(bar, 0.0) else UNSURE
    return Check(name, state, f"{test.summary()}; {what} {bar:+.4f}")


def _same_classes(answers: Answers, policy: GatePolicy) -> tuple[list[Check], stats.PairedTest]:
    test = stats.paired(answers.champion_right, answers.challenger_right, policy.alpha)
    bar = -policy.margin if policy.mode == "non_inferiority" else policy.min_delta
    accuracy = _difference("accuracy_vs_champion", test, bar, "lower bound above")
    return [accuracy, _recall_drops(answers, policy)], test


def _recall_drops(answers: Answers, policy: GatePolicy) -> Check:
    """Per class: a one-sided exact test of "recall dropped", Holm-corrected over the
    classes; a class refuses only with that evidence and a drop over the tolerance."""
    tests = {
        name: stats.paired(answers.champion_right[m], answers.challenger_right[m], policy.alpha)
        for name in np.unique(answers.labels)
        if (m := answers.labels == name).any()
    }
    rejected = stats.holm({n: t.p_worse for n, t in tests.items()}, policy.alpha)
    dropped = sorted(
        n for n, t in tests.items() if rejected[n] and -t.difference > policy.max_recall_drop
    )
    if not tests:
        return Check("per_class_recall", PASS, "no shared classes")
    worst = min(tests, key=lambda n: tests[n].difference)
    detail = (
        f"largest recall drop {-tests[worst].difference:+.4f} ({worst}, p "
        f"{tests[worst].p_worse:.3g}); Holm over {len(tests)} classes at alpha "
        f"{policy.alpha:g}, tolerance {policy.max_recall_drop:.4f}"
    )
    if dropped:
        detail += f"; dropped: {', '.join(dropped)}"
    return Check("per_class_recall", FAIL if dropped else PASS, detail)


def _negative_flips(test: stats.PairedTest, most: float) -> Check:
    rate = test.losses / test.n if test.n else 0.0
    detail = f"{test.losses} of {test.n} images answered worse ({rate:.2%}) vs at most {most:.2%}"
    return Check("negative_flip_rate", PASS if rate <= most else FAIL, detail)


def _new_classes(
    challenger: Evaluation, answers: Answers, new: list[str], policy: GatePolicy
) -> tuple[list[Check], stats.PairedTest]:
    test = stats.paired(answers.champion_right, answers.challenger_right, policy.alpha)
    bar = -policy.max_old_accuracy_drop
    checks = [_difference("old_class_accuracy", test, bar, "old classes, lower bound above")]
    floor = policy.new_class_min_recall
    for name in new:
        row = challenger.per_class.get(name)
        support = int(row["support"]) if row else 0
        hits = round(row["recall"] * support) if row else 0
        low = stats.lower_bound(hits, support, policy.alpha)
        high = stats.upper_bound(hits, support, policy.alpha)
        state = PASS if support and low >= floor else FAIL if high < floor else UNSURE
        detail = (
            f"recall {hits / support:.4f} on {support} images, bounds [{low:.4f}, {high:.4f}] "
            f"vs floor {floor:.4f}"
            if support
            else f"no holdout image of {name}: its recall cannot be judged"
        )
        checks.append(Check(f"new_class_recall.{name}", state, detail))
    return checks, test


def _production(shadow: Shadow, policy: GatePolicy) -> Check | None:
    """Refuse on evidence the challenger is worse on labelled production images, once there
    are enough of them to count."""
    test = shadow.labelled
    if test is None or test.n < policy.production_min_images:
        return None
    state = FAIL if test.high < 0 else PASS
    return Check("production_accuracy", state, f"{test.summary()}; refuses below zero")


def decide(
    challenger: Evaluation,
    champion: Evaluation | None,
    policy: GatePolicy,
    champion_label: str = "champion",
    answers: Answers | None = None,
    shadow: Shadow | None = None,
) -> Decision:
    """Bless, refuse or leave the challenger undecided.

    Args:
        challenger: the challenger's evaluation on the holdout (all its classes).
        champion: the champion's evaluation on the same images of its classes, or None if
            there is no champion yet.
        policy: thresholds, alpha and mode.
        champion_label: how the baseline is named in the decision (e.g. "champion v3").
        answers: both models' correctness on the champion's classes' images (needed with a
            champion).
        shadow: both models on production traffic (reported; a check once enough labelled
            production images exist).
    """
    checks = [_floor(challenger, policy)]
    if champion is None:
        return Decision("blessed" if checks[0].passed else "refused", "no baseline", checks)
    if answers is None:
        raise ValueError("judging against a champion needs both models' answers, paired")
    new = [c for c in challenger.class_names if c not in champion.class_names]
    if new:
        more, test = _new_classes(challenger, answers, new, policy)
        margin = policy.max_old_accuracy_drop
    else:
        more, test = _same_classes(answers, policy)
        margin = policy.margin if policy.mode == "non_inferiority" else -policy.min_delta
    checks += more
    if policy.max_negative_flip_rate is not None:
        checks.append(_negative_flips(test, policy.max_negative_flip_rate))
    if shadow is not None and (production := _production(shadow, policy)) is not None:
        checks.append(production)
    states = {c.state for c in checks}
    outcome = "refused" if FAIL in states else "inconclusive" if UNSURE in states else "blessed"
    needed = None
    if outcome == "inconclusive":
        needed = stats.images_needed(test, margin, policy.alpha)
    return Decision(outcome, champion_label, checks, new, test, needed, answers.flips(), shadow)
