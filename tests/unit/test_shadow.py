"""The shadow check on a real prediction log (written by the serving log writer to a folder):
agreement and class shares on recent traffic, paired accuracy on the production holdout, a
gate check once enough labelled images exist, and what it says when the log is empty or
retention removed labelled images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.objectstore import Store
from core.policies import GatePolicy
from core.settings import LoopConfig
from pipelines.judge.candidate import Baseline, assess
from pipelines.judge.shadow import read_sample
from pipelines.loop import labelqueue, predlog
from pipelines.models.modelfile import LoadedModel
from tests.conftest import coloured_images

CLASSES = ["red", "green", "blue"]


def _model(order: list[int]) -> LoadedModel:
    """Answers the brightest channel (``order`` permutes the answers): no training needed."""
    import keras

    inputs = keras.Input((24, 24, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.eye(3)[:, order].astype("float32") * 0.2, np.zeros(3, "float32")])
    return LoadedModel(model, list(CLASSES))


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _log(tmp_path: Path, images: np.ndarray) -> tuple[Store, list[str]]:
    """A prediction log of ``images``, as serving writes it; their ids."""
    store = Store(str(tmp_path / "log"))
    writer = predlog.LogWriter(store, LoopConfig(), start=False)
    uploads = [(f"{i}.png", _png(x)) for i, x in enumerate(images)]
    probs = np.full((len(images), 3), 1 / 3)
    writer.record(uploads, "1", CLASSES, probs, np.zeros((len(images), 4)))
    writer.close()
    return store, [predlog.image_id(data) for _, data in uploads]


@pytest.fixture(scope="module")
def models():
    return _model([0, 1, 2]), _model([0, 2, 1])  # the second swaps green and blue


def test_agreement_shares_and_a_production_holdout_that_refuses(tmp_path: Path, models) -> None:
    champion, swapped = models
    traffic = coloured_images(CLASSES, 20, seed=3)
    store, ids = _log(tmp_path, traffic.x)
    labels = {i: CLASSES[y] for i, y in zip(ids, traffic.y, strict=True)}
    held = labelqueue.hold_out(labels, 0.5)
    assert len(held) == 30 and set(held) < set(labels)
    labelqueue.record_labelled(store, "sub-1", labels, held)
    assert labelqueue.production_labels(store) == held
    assert labelqueue.labelled_ids(store) == set(labels)

    holdout = coloured_images(CLASSES, 30, seed=4)
    policy = GatePolicy(mode="non_inferiority", margin=1.0, production_min_images=20)
    same = assess(champion, holdout, policy, Baseline(champion, "1"), store)
    shadow = same.decision.shadow
    assert shadow.images == 60 and shadow.agreement == 1.0
    assert shadow.labelled.n == 30 and shadow.champion_accuracy == shadow.challenger_accuracy
    assert "production_accuracy" in [c.name for c in same.decision.checks]

    worse = assess(swapped, holdout, policy, Baseline(champion, "1"), store)
    shadow = worse.decision.shadow
    assert shadow.agreement == pytest.approx(1 / 3)  # only the red images answered alike
    assert shadow.shares["green"] == pytest.approx((1 / 3, 1 / 3))  # shares alike, answers not
    assert shadow.challenger_accuracy < shadow.champion_accuracy
    failed = [c.name for c in worse.decision.checks if c.state == "fail"]
    assert "production_accuracy" in failed and worse.decision.outcome == "refused"
    assert "Production traffic (shadow check)" in worse.decision.markdown()
    assert worse.decision.metrics()["shadow.agreement"] == pytest.approx(1 / 3)

    # Too few labelled production images to count: reported, not a check.
    few = GatePolicy(mode="non_inferiority", margin=1.0, production_min_images=31)
    reported = assess(swapped, holdout, few, Baseline(champion, "1"), store).decision
    assert "production_accuracy" not in [c.name for c in reported.checks]
    assert reported.shadow.labelled.n == 30


def test_an_empty_log_and_images_retention_removed_are_said(tmp_path: Path, models) -> None:
    champion, _ = models
    empty = assess(
        champion,
        coloured_images(CLASSES, 5, seed=5),
        GatePolicy(mode="non_inferiority", margin=1.0),
        Baseline(champion, "1"),
        Store(str(tmp_path / "nothing")),
    )
    assert "no production traffic to compare on" in empty.decision.markdown()
    assert empty.decision.outcome == "blessed"  # the shadow check never fails a run

    traffic = coloured_images(CLASSES, 4, seed=6)
    store, ids = _log(tmp_path, traffic.x)
    labels = {i: CLASSES[y] for i, y in zip(ids, traffic.y, strict=True)}
    labelqueue.record_labelled(store, "sub-2", labels, labels)
    gone = next(e for e in predlog.read_log(store).entries if e["id"] == ids[0])
    store.fs.rm_file(store.path(gone["image"]))
    sample = read_sample(store, newest=3)
    assert len(sample.recent) == 3 and len(sample.labelled) == 11
    assert "1 of 12 labelled production images were removed by retention" in sample.notes
