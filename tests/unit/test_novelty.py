"""Relative-density novelty, far groups, "more like these" and typical picks on embeddings
with a known structure: ten well-separated kinds of image, the training data holding nine."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.loop.novelty import far_groups, more_like, novelty, typical

WIDTH = 64


def blobs(kinds: list[int], per_kind: int, seed: int, spread: float = 0.35) -> np.ndarray:
    centres = np.random.default_rng(99).normal(size=(10, WIDTH))
    rng = np.random.default_rng(seed)
    return np.concatenate([centres[k] + spread * rng.normal(size=(per_kind, WIDTH)) for k in kinds])


TRAINING = blobs(list(range(9)), 100, seed=1)


def test_a_kind_the_training_data_lacks_is_far_and_known_kinds_are_not():
    logged = blobs(list(range(10)), 150, seed=2)  # kind 9 is new
    new = np.arange(len(logged)) >= 9 * 150
    found = novelty(logged, TRAINING)
    assert found.far[new].mean() > 0.95
    assert found.far[~new].mean() < 0.01
    assert new[found.order()[:150]].all()


def test_a_log_like_the_training_data_has_almost_nothing_far():
    found = novelty(blobs(list(range(9)), 150, seed=3), TRAINING)
    assert found.far.mean() < 0.01
    assert far_groups(blobs(list(range(9)), 150, seed=3), found.far) == []


def test_a_new_kind_stands_out_once_the_log_holds_about_k_of_them():
    known = blobs(list(range(9)), 300, seed=4)
    logged = np.concatenate([known, blobs([9], 50, seed=5)])  # 1.8% of the log
    assert novelty(logged, TRAINING, k=50).far[-50:].mean() > 0.9
    fewer = np.concatenate([known, blobs([9], 20, seed=5)])  # 0.7%: not yet a region
    found = novelty(fewer, TRAINING, k=50)
    assert found.far[-20:].mean() < 0.5


def test_far_images_form_one_group_per_new_kind():
    logged = np.concatenate(
        [blobs(list(range(8)), 100, seed=6), blobs([8], 70, seed=7), blobs([9], 55, seed=8)]
    )
    training = blobs(list(range(8)), 100, seed=9)
    found = novelty(logged, training)
    groups = far_groups(logged, found.far)
    assert [len(g) for g in groups] == [70, 55]
    assert set(groups[0]) == set(range(800, 870)) and set(groups[1]) == set(range(870, 925))


def test_more_like_these_finds_the_seeds_kind():
    logged = blobs(list(range(10)), 100, seed=10)
    seeds = np.arange(900, 905)
    for known in (None, TRAINING):
        picked, _ = more_like(logged, logged[seeds], 50, exclude=seeds, known=known)
        assert len(picked) == 50 and not set(picked) & set(seeds)
        assert (picked >= 900).mean() == 1.0
    with pytest.raises(ValueError, match="at least one seed"):
        more_like(logged, logged[:0], 5)


def test_more_like_these_learns_what_sets_the_seeds_apart_from_the_training_data():
    """A new kind beside a known one, in an embedding where nuisance directions (light,
    pose) vary more than what tells the two apart: similarity to the seeds drifts into
    the known kind, the classifier against the training images does not."""
    centres = np.random.default_rng(99).normal(size=(10, WIDTH)) * 0.5
    centres[9] = centres[8] + 0.7 * np.random.default_rng(7).normal(size=WIDTH)
    scale = np.full(WIDTH, 0.3)
    scale[:8] = 6.0  # the nuisance

    def kinds(which, seed):
        rng = np.random.default_rng(seed)
        return np.concatenate([centres[k] + scale * rng.normal(size=(100, WIDTH)) for k in which])

    logged, training, seeds = kinds(range(10), 12), kinds(range(9), 1), np.arange(900, 905)
    similar, _ = more_like(logged, logged[seeds], 50, exclude=seeds)
    learned, score = more_like(logged, logged[seeds], 50, exclude=seeds, known=training)
    assert (learned >= 900).mean() >= 0.9 and (similar >= 900).mean() <= 0.8
    assert score.shape == (1000,) and not set(learned) & set(seeds)


def test_typical_picks_cover_every_kind_at_a_budget_of_one_each():
    logged = blobs(list(range(10)), 60, seed=11)
    picks = typical(logged, 10)
    assert sorted(set(picks // 60)) == list(range(10))
    assert len(typical(logged[:3], 10)) == 3  # fewer images than the budget


def test_embeddings_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="training images' embeddings"):
        novelty(TRAINING, TRAINING[:0])
    with pytest.raises(ValueError, match="not the same embedding"):
        novelty(TRAINING[:, :10], TRAINING)
    assert len(novelty(TRAINING[:0], TRAINING).p) == 0


def test_far_holds_its_false_discovery_rate_in_a_large_log():
    """Benjamini-Hochberg over the log: a large log like the training data marks nothing;
    with a new kind in it, nearly all of that kind and few others."""
    assert novelty(blobs(list(range(9)), 1500, seed=6), TRAINING).far.sum() == 0
    logged = np.concatenate([blobs(list(range(9)), 1500, seed=6), blobs([9], 1500, seed=7)])
    found = novelty(logged, TRAINING)
    new = np.arange(len(logged)) >= 9 * 1500
    assert found.far[new].mean() > 0.9
    assert (found.far & ~new).sum() <= 0.05 * found.far.sum()
