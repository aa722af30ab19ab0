"""What the champion has never seen: logged images in regions of an embedding where the
training data is thin, and the groups they form.

**Relative density.** Put the logged images and a sample of the training images in one
set and look at each logged image's ``k`` nearest neighbours (cosine; ``k`` at least 50, and
large enough that chance puts 10 training images among them). If the log came from
the training distribution, a neighbour is a training image with probability ``t0`` (the
training sample's share of the set), so the count of training neighbours is about
Binomial(k, t0); an image whose neighbourhood holds far fewer training images than that lies
where the champion had no data. The score is the binomial lower tail of the observed count
(``p``), which calibrates itself to the sizes of both sets. "Far from every class" means
rejected at a false discovery rate of ``far_fdr`` (Benjamini-Hochberg over the log's
``p``): of the images so marked, at most that share are expected to be ordinary ones,
however large the log (a fixed ``p`` threshold would mark more ordinary images the larger
it grows), and the more unseen images the log holds, the more of them pass. Unlike the
distance to class centroids, this needs no class structure, and it finds a new class that
sits near a known one (trucks beside automobiles) as soon as the log holds about ``k`` of
them. Measured by ``bench/picks.py`` on CIFAR-10 (9-class champions, a stream of images
the built-in model never trained on with 10% trucks, 10 seeds): on the ImageNet embedding
(``pipelines.models.embedding``) trucks fill 9.3x their share of the 50 most novel images
and 4.0x of the 400 most novel; on the built-in champion's features 8.4x and 3.5x (the
distance to the nearest class centroid, the queue's measure before: 4.0x and 2.4x); on a
weak champion's own features 1.7-2.6x.

Embeddings wider than 128 are projected onto their first 128 principal components first,
fitted on at most 3,000 rows (10,000 logged images ranked in 1.2 s on 2 cores, 3.4 s
without the projection).

**Groups.** The far images are clustered (agglomerative, average linkage on cosine
distance, cut at ``group_distance``) so a person can name a whole group in one step.
Numpy and scikit-learn only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, false_discovery_control
from sklearn.cluster import AgglomerativeClustering
from sklearn.neighbors import NearestNeighbors

NEIGHBOURS = 50  # at least; more when the log is large beside the training sample
MIN_EXPECTED = 10  # training images chance puts among an image's neighbours, at least
DIMENSIONS = 128  # wider embeddings are projected (PCA) to this many before the search
FIT_ROWS = 3000  # rows the projection is fitted on
FAR_FDR = 0.05  # "far from every class": Benjamini-Hochberg at this false discovery rate
GROUP_DISTANCE = 0.5  # cosine distance at which far images stop counting as one group
MIN_GROUP = 3
LIKE_C = 1.0  # "more like these": the classifier's inverse regularisation strength


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Novelty:
    """Per logged image: how many of its ``k`` nearest neighbours are training images, how
    many chance would give (``expected``), the lower-tail probability ``p`` and ``far``."""

    train_neighbours: np.ndarray  # (N,) int
    expected: float
    p: np.ndarray  # (N,) float
    far: np.ndarray  # (N,) bool
    k: int

    def order(self) -> np.ndarray:
        """Most novel first: the smallest ``p``; ties (several with no training neighbour)
        keep the log's order."""
        return np.argsort(self.p, kind="stable")


def novelty(
    logged: np.ndarray, training: np.ndarray, k: int = NEIGHBOURS, far_fdr: float = FAR_FDR
) -> Novelty:
    """The relative-density novelty of ``logged`` embeddings (N, D) against ``training``
    embeddings (M, D) of the same embedding.

    Raises:
        ValueError: no training embeddings, or the two have different widths.
    """
    if len(training) == 0:
        raise ValueError("novelty needs the training images' embeddings; there are none")
    if logged.shape[1] != training.shape[1]:
        raise ValueError(
            f"logged embeddings are {logged.shape[1]} wide, the training ones "
            f"{training.shape[1]}: not the same embedding"
        )
    n, m = len(logged), len(training)
    if n == 0:
        empty = np.zeros(0)
        return Novelty(empty.astype(int), 0.0, empty, empty.astype(bool), 0)
    # enough neighbours that chance expects MIN_EXPECTED training images among them: with a
    # log many times the training sample, 50 neighbours could never be significant
    k = max(k, math.ceil(MIN_EXPECTED * (n + m - 1) / m))
    k = max(1, min(k, n + m - 1))
    both = project(np.concatenate([unit(training), unit(logged)]))
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(both)
    _, index = neighbours.kneighbors(both[m:])  # k + 1: the image itself is (nearly) always one
    itself = index == (m + np.arange(n))[:, None]
    counts = ((index < m) & ~itself).sum(axis=1)
    counts -= (~itself.any(axis=1)) & (index[:, k] < m)  # an exact duplicate pushed it out
    expected = m / (n + m - 1)
    p = binom.cdf(counts, k, expected)
    far = false_discovery_control(p, method="bh") < far_fdr
    return Novelty(counts, expected * k, p, far, k)


def project(x: np.ndarray, dims: int = DIMENSIONS, seed: int = 0) -> np.ndarray:
    """Unit rows of ``x``, onto its first ``dims`` principal components when wider (fitted
    on at most ``FIT_ROWS`` rows: the same axes, a fraction of the time)."""
    x = unit(x)
    if x.shape[1] <= dims or len(x) <= dims:
        return x
    from sklearn.decomposition import PCA

    rows = np.random.default_rng(seed).permutation(len(x))[:FIT_ROWS]
    pca = PCA(dims, svd_solver="randomized", random_state=seed).fit(x[rows])
    return unit(pca.transform(x))


def far_groups(
    logged: np.ndarray,
    far: np.ndarray,
    distance: float = GROUP_DISTANCE,
    min_size: int = MIN_GROUP,
) -> list[np.ndarray]:
    """The far images in groups that look alike: indices into ``logged``, largest group
    first; groups smaller than ``min_size`` are left out (single odd images are the queue's
    business, not a new class)."""
    candidates = np.flatnonzero(far)
    if len(candidates) < max(min_size, 2):
        return []
    labels = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance
    ).fit_predict(unit(logged[candidates]))
    groups = [candidates[labels == g] for g in np.unique(labels)]
    return sorted((g for g in groups if len(g) >= min_size), key=len, reverse=True)


def more_like(
    embeddings: np.ndarray,
    seeds: np.ndarray,
    n: int,
    exclude: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` embeddings most like the ``seeds``, best first, leaving out ``exclude``
    (e.g. the seeds themselves): (indices, every embedding's score).

    With ``known`` (the champion's training sample in the same embedding) the score is a
    linear classifier's, seeds against the training images (logistic regression, classes
    weighted equally, ``LIKE_C``): it learns what sets the seeds apart from what the
    champion knows, so a new class's look-alikes of a known class (pickup trucks beside
    cars) rank below the new class itself. Without it, the cosine similarity to the seeds'
    mean direction. ``bench/loop.py``: 5 logged trucks -> the 50 best, ImageNet embedding,
    10 seeds: 0.70 of them trucks by similarity, 0.89 by the classifier (in a champion's
    own features, where an unseen class sits on the known ones, no gain: 0.59 vs 0.62).
    Seeds of a known class do as well or better (5 cars, cats or ships, same setting, one
    run: 0.65, 0.44, 0.76 against 0.64, 0.41, 0.65).
    """
    if len(seeds) == 0:
        raise ValueError("more like what? give at least one seed image")
    x = unit(embeddings)
    if known is not None and len(known):
        from sklearn.linear_model import LogisticRegression

        train = np.concatenate([unit(seeds), unit(known)])
        target = np.r_[np.ones(len(seeds)), np.zeros(len(known))]
        fitted = LogisticRegression(C=LIKE_C, class_weight="balanced", max_iter=1000)
        score = fitted.fit(train, target).decision_function(x)
    else:
        score = x @ unit(unit(seeds).mean(axis=0, keepdims=True))[0]
    ranked = score.astype(np.float64)
    if exclude is not None and len(exclude):
        ranked[np.asarray(exclude)] = -np.inf
    order = np.argsort(-ranked, kind="stable")
    return order[np.isfinite(ranked[order])][:n], score


def typical(embeddings: np.ndarray, n: int, seed: int = 0, k: int = 20) -> np.ndarray:
    """``n`` images that cover the embeddings (TypiClust, Hacohen et al. 2022): k-means with
    ``n`` clusters, and in each the most typical image (the smallest mean distance to its
    ``k`` nearest neighbours within the cluster). For small budgets and weak champions,
    where uncertainty picks the ambiguous images a weak model stumbles on."""
    from sklearn.cluster import KMeans

    x = unit(embeddings)
    n = min(n, len(x))
    if n == 0:
        return np.zeros(0, int)
    labels = KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(x)
    picks = []
    for cluster in range(n):
        members = np.flatnonzero(labels == cluster)
        if len(members) == 0:
            continue
        d = 1 - x[members] @ x[members].T
        kk = min(k, len(members) - 1)
        spread = np.sort(d, axis=1)[:, 1 : kk + 1].mean(axis=1) if kk else np.zeros(1)
        picks.append(members[int(np.argmin(spread))])
    return np.array(picks, int)
