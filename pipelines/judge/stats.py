"""The gate's statistics: two models that answered the same images, compared image by image.

Only the images on which they disagree carry evidence: ``gains`` (the challenger right, the
champion wrong) and ``losses`` (the reverse). Given ``m = gains + losses`` such images, under
"neither is better" ``gains`` is Binomial(m, 1/2): the exact McNemar test. The accuracy
difference is ``(gains - losses) / n``; its interval comes from the Clopper-Pearson interval
of ``gains / m`` (exact, conditional on ``m``). A new class's recall is judged by its
one-sided Clopper-Pearson lower bound, and per-class recall drops by one-sided exact tests
with Holm's correction, so ten classes do not give ten chances to refuse by luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm


@dataclass(frozen=True)
class PairedTest:
    """Two models on the same ``n`` images."""

    n: int
    gains: int  # challenger right where the champion was wrong (positive flips)
    losses: int  # champion right where the challenger is wrong (negative flips)
    low: float  # one-sided lower bound of the accuracy difference at the test's alpha
    high: float  # one-sided upper bound
    p_better: float  # exact one-sided p-value of "the challenger is better"
    p_worse: float  # exact one-sided p-value of "the challenger is worse"

    @property
    def difference(self) -> float:
        return (self.gains - self.losses) / self.n if self.n else 0.0

    def summary(self) -> str:
        return (
            f"difference {self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}] on "
            f"{self.n} images ({self.gains} gained, {self.losses} lost; "
            f"p better {self.p_better:.3g}, p worse {self.p_worse:.3g})"
        )


def paired(champion_right: np.ndarray, challenger_right: np.ndarray, alpha: float) -> PairedTest:
    """The exact paired comparison of two models' correctness on the same images."""
    champion_right = np.asarray(champion_right, bool)
    challenger_right = np.asarray(challenger_right, bool)
    n = len(champion_right)
    gains = int((challenger_right & ~champion_right).sum())
    losses = int((champion_right & ~challenger_right).sum())
    m = gains + losses
    if m == 0:  # no disagreement: no evidence either way
        return PairedTest(n, 0, 0, 0.0, 0.0, 1.0, 1.0)
    share = binomtest(gains, m).proportion_ci(1 - 2 * alpha, method="exact")
    return PairedTest(
        n,
        gains,
        losses,
        (2 * share.low - 1) * m / n,
        (2 * share.high - 1) * m / n,
        binomtest(gains, m, alternative="greater").pvalue,
        binomtest(losses, m, alternative="greater").pvalue,
    )


def lower_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound of a proportion at level 1 - alpha."""
    if trials == 0:
        return 0.0
    return float(binomtest(successes, trials).proportion_ci(1 - 2 * alpha, method="exact").low)


def upper_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound of a proportion at level 1 - alpha."""
    if trials == 0:
        return 1.0
    return float(binomtest(successes, trials).proportion_ci(1 - 2 * alpha, method="exact").high)


def holm(p_values: dict[str, float], alpha: float) -> dict[str, bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return {}
    rejected, *_ = multipletests(list(p_values.values()), alpha=alpha, method="holm")
    return dict(zip(p_values, (bool(r) for r in rejected), strict=True))


def images_needed(test: PairedTest, margin: float, alpha: float, power: float = 0.8) -> int | None:
    """About how many images the same comparison would need to decide at ``power``: the
    normal approximation for McNemar's test of a difference above ``-margin`` (0: plain
    superiority), with the observed disagreement rate and difference. None when the
    observed difference does not clear the margin (more images would not likely bless it)."""
    effect = test.difference + margin
    if test.n == 0 or effect <= 0:
        return None
    disagree = max((test.gains + test.losses) / test.n, 1 / test.n)
    z = norm.ppf(1 - alpha) * math.sqrt(disagree) + norm.ppf(power) * math.sqrt(
        max(disagree - test.difference**2, 1e-12)
    )
    return math.ceil((z / effect) ** 2)
