"""Drift: do new images (a batch at validation, or the live prediction log) look like the
ones the champion was trained on?

The score is the maximum mean discrepancy (MMD², Gaussian kernel at the median distance)
between the champion's features of the new images and of its training sample
(``pipelines.loop.features``), with a permutation test for its p-value: drifted when p < alpha.
Beside it, the shift in predicted class shares (total variation distance) and in mean
confidence, and the images most unlike training (the MMD witness function), for the
reports' thumbnail grids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.loop.features import TrainingFeatures

MAX_PER_SIDE = 500  # images per side in the test (a seeded subsample beyond)


@dataclass
class DriftResult:
    """One drift check: the test, the prediction shifts, and what drifted most."""

    mmd: float
    p_value: float
    drifted: bool
    alpha: float
    n_reference: int
    n_current: int
    class_shares: dict[str, tuple[float, float]]  # class -> (training, current) predicted share
    class_shift: float  # total variation distance between the two
    confidence: tuple[float, float]  # mean top-1 probability (training, current)
    most_drifted: list[int] = field(default_factory=list)  # current indices, most unlike first

    @property
    def confidence_shift(self) -> float:
        return self.confidence[1] - self.confidence[0]

    def classes_that_moved(self, n: int = 3) -> list[tuple[str, float]]:
        """The classes whose predicted share changed most: (class, change)."""
        moved = [(c, cur - ref) for c, (ref, cur) in self.class_shares.items()]
        return sorted(moved, key=lambda m: -abs(m[1]))[:n]

    def metrics(self) -> dict[str, float]:
        return {
            "drift.mmd": self.mmd,
            "drift.p_value": self.p_value,
            "drift.drifted": float(self.drifted),
            "drift.class_shift": self.class_shift,
            "drift.confidence_shift": self.confidence_shift,
            "drift.images": float(self.n_current),
        }

    def summary(self) -> str:
        verdict = "DRIFTED" if self.drifted else "no drift"
        moved = ", ".join(f"{c} {d:+.0%}" for c, d in self.classes_that_moved() if abs(d) >= 0.01)
        return (
            f"{verdict}: MMD² {self.mmd:.4f}, p = {self.p_value:.3f} (alpha {self.alpha:g}) on "
            f"{self.n_current} images vs {self.n_reference} training images; predicted class "
            f"shares moved {self.class_shift:.0%}{f' ({moved})' if moved else ''}; mean "
            f"confidence {self.confidence[0]:.2f} -> {self.confidence[1]:.2f}"
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"confidence_shift": self.confidence_shift}


def _subsample(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, MAX_PER_SIDE, replace=False)) if n > MAX_PER_SIDE else np.arange(n)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mmd_test(
    reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0
) -> tuple[float, float, np.ndarray]:
    """(MMD², permutation p-value, witness value of each current row) of two feature sets.

    Features are L2-normalised; the kernel width is the median pairwise distance. The
    witness is how much closer a row is to the current set than to the reference: the
    highest ones are the images most unlike training.
    """
    rng = np.random.default_rng(seed)
    ref = _normalise(reference[_subsample(len(reference), rng)].astype(np.float64))
    cur_index = _subsample(len(current), rng)
    cur = _normalise(current[cur_index].astype(np.float64))
    pooled = np.concatenate([ref, cur])
    sq = np.maximum(2 - 2 * pooled @ pooled.T, 0)  # unit vectors: |a-b|² = 2 - 2ab
    width = np.median(sq[np.triu_indices(len(pooled), 1)]) or 1.0
    kernel = np.exp(-sq / width)
    n = len(ref)

    def statistic(masks: np.ndarray) -> np.ndarray:  # masks (N, P): True = reference side
        a = masks / masks.sum(0)
        b = ~masks / (~masks).sum(0)
        ka, kb = kernel @ a, kernel @ b
        return (a * ka).sum(0) + (b * kb).sum(0) - 2 * (a * kb).sum(0)

    observed = float(statistic((np.arange(len(pooled)) < n)[:, None])[0])
    shuffled = np.stack([rng.permutation(len(pooled)) < n for _ in range(permutations)], 1)
    null = statistic(shuffled)
    p_value = float((1 + (null >= observed).sum()) / (1 + permutations))
    witness = np.zeros(len(current))
    witness[cur_index] = kernel[n:, n:].mean(1) - kernel[n:, :n].mean(1)
    witness[np.setdiff1d(np.arange(len(current)), cur_index)] = -np.inf
    return observed, p_value, witness


def compare(
    reference: TrainingFeatures,
    features: np.ndarray,
    top1: list[str],
    confidence: np.ndarray,
    alpha: float,
    permutations: int = 200,
    show: int = 16,
) -> DriftResult:
    """Drift of new images (their features, predicted labels and top-1 probabilities)
    against the training sample ``reference``."""
    mmd, p_value, witness = mmd_test(reference.features, features, permutations)
    classes = list(reference.class_names)
    ref_pred = np.array(classes)[reference.probs.argmax(1)]
    shares = {}
    for name in sorted(set(classes) | set(top1)):
        shares[name] = (float((ref_pred == name).mean()), float(np.mean(np.array(top1) == name)))
    shift = 0.5 * sum(abs(cur - ref) for ref, cur in shares.values())
    most = [int(i) for i in np.argsort(-witness)[:show] if np.isfinite(witness[i])]
    return DriftResult(
        mmd=round(mmd, 6),
        p_value=round(p_value, 4),
        drifted=p_value < alpha,
        alpha=alpha,
        n_reference=len(reference.features),
        n_current=len(features),
        class_shares=shares,
        class_shift=round(float(shift), 4),
        confidence=(
            round(float(reference.probs.max(1).mean()), 4),
            round(float(np.mean(confidence)), 4),
        ),
        most_drifted=most,
    )
