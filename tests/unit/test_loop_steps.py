"""Closing the loop without servers: the prediction log (writes, crashes, retention, a full
disk), drift with a known shift, cleanlab on a batch with flipped labels through the real
intake check, and the label queue with its export taken back in as a batch. The model is the
shipped 9-class built-in one; the images are the embedded CIFAR-10 sample's."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.objectstore import Store
from core.policies import IngestLimits, ValidationPolicy
from core.settings import LoopConfig, Settings
from pipelines.loop import labelqueue, newclass, predlog

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
]  # fmt: skip


def _jpeg(x: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(x).save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    """The built-in model, its features of seed training images, and incoming images
    (9 known classes, and trucks it has never seen), decoded at 32x32."""
    from pipelines.loop.features import TrainingFeatures, features_and_probs
    from pipelines.models.modelfile import load_refit_model

    root = tmp_path_factory.mktemp("sample")
    with tarfile.open(Settings().sample_archive) as tar:  # only what the tests read
        wanted = [
            m for m in tar.getmembers()
            if m.name.startswith(("seed/train/", "incoming/")) and m.name.endswith(".jpg")
        ]  # fmt: skip
        per_folder: dict[str, list] = {}
        for member in sorted(wanted, key=lambda m: m.name):
            per_folder.setdefault(member.name.rsplit("/", 1)[0], []).append(member)
        tar.extractall(root, [m for ms in per_folder.values() for m in ms[:60]], filter="data")
    loaded = load_refit_model(Settings().builtin_model)

    def read(part: str, classes: list[str], per_class: int):
        paths, labels = [], []
        for label in classes:
            found = sorted((root / part / label).glob("*.jpg"))[:per_class]
            paths += found
            labels += [label] * len(found)
        x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        return paths, labels, x

    _, train_labels, train_x = read("seed/train", CLASSES, 40)
    probs, feats = features_and_probs(loaded.model, train_x)
    reference = TrainingFeatures(
        feats, np.array([CLASSES.index(c) for c in train_labels]), probs, CLASSES
    )
    paths, labels, x = read("incoming", CLASSES, 40)
    truck_paths, _, trucks = read("incoming", ["truck"], 60)
    return {
        "root": root,
        "loaded": loaded,
        "reference": reference,
        "paths": paths,
        "labels": labels,
        "x": x,
        "truck_paths": truck_paths,
        "trucks": trucks,
    }


def _config(**changes) -> LoopConfig:
    return LoopConfig(flush_s=0.05, **changes)


def _writer(tmp_path: Path, **changes) -> predlog.LogWriter:
    return predlog.LogWriter(Store(str(tmp_path / "log")), _config(**changes), start=False)


def _log(writer, images: list[bytes], probs: np.ndarray, feats: np.ndarray, version="3"):
    uploads = [(f"upload{i}.jpg", data) for i, data in enumerate(images)]
    writer.record(uploads, version, CLASSES, probs, feats)
    while writer.flush():
        pass


def _probs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)), n)


# --------------------------------------------------------------------------- the log


def test_training_features_keep_the_imagenet_embedding_only_when_given(sample) -> None:
    from pipelines.loop.features import TrainingFeatures

    plain = sample["reference"]
    again = TrainingFeatures.from_bytes(plain.to_bytes())  # as versions registered before
    assert again.imagenet is None and np.array_equal(again.features, plain.features)
    embedded = dataclasses.replace(plain, imagenet=np.eye(3, 1280))
    kept = TrainingFeatures.from_bytes(embedded.to_bytes())
    assert kept.imagenet.dtype == np.float32 and np.array_equal(kept.imagenet, np.eye(3, 1280))


def test_the_label_page_says_why_it_is_not_in_the_imagenet_embedding(sample) -> None:
    from serving.label import _where

    plain = sample["reference"]  # a version registered without the ImageNet embedding
    assert "registered without the ImageNet embedding" in _where("imagenet", plain, None)
    kept = dataclasses.replace(plain, imagenet=np.eye(3, 1280))
    assert "not in the log's store" in _where("imagenet", kept, None)
    assert _where("imagenet", kept, object()) == _where("champion", plain, None) == ""


def test_the_log_keeps_each_answer_with_its_image_once_and_skips_a_cut_line(tmp_path) -> None:
    writer = _writer(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    images = [_jpeg(p) for p in pixels]
    feats = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    _log(writer, [*images, images[0]], _probs(4), feats)  # the first image twice
    store = writer.store
    assert len(list((tmp_path / "log" / "images").rglob("*.jpg"))) == 3  # content-addressed
    view = predlog.read_log(store)
    assert len(view) == 3 and view.unreadable == 0 and view.features.shape == (3, 16)
    entry = view.entries[-1]
    assert entry["id"] == predlog.image_id(images[0]) and entry["version"] == "3"
    assert predlog.image_bytes(store, entry) == images[0]
    np.testing.assert_allclose(view.features[-1], feats[3], atol=1e-2)  # float16 on disk
    # a file cut short by something else (a crash mid-copy): its last line is skipped, counted
    entries = sorted((tmp_path / "log" / "entries").glob("*.jsonl"))
    text = entries[0].read_text()
    (entries[0].parent / "00-cut.jsonl").write_text(text + text.splitlines()[0][:40])
    again = predlog.read_log(store)
    assert again.unreadable == 1 and len(again) == 3


def test_a_popular_image_is_looked_up_once_until_retention_removes_files(
    tmp_path, monkeypatch
) -> None:
    class Counting(Store):
        lookups = 0

        def exists(self, path) -> bool:
            Counting.lookups += 1
            return super().exists(path)

    writer = predlog.LogWriter(Counting(str(tmp_path / "log")), _config(), start=False)
    image = _jpeg(np.full((8, 8, 3), 7, dtype=np.uint8))
    for _ in range(5):  # five flushes of the same image, twice each
        _log(writer, [image, image], _probs(2), np.zeros((2, 4)))
    lines = [f.read_text().splitlines() for f in (tmp_path / "log" / "entries").glob("*")]
    assert Counting.lookups == 1 and sum(map(len, lines)) == 10
    monkeypatch.setattr(predlog, "GRACE_S", 0.0)
    writer.config = writer.config.model_copy(update={"max_log_age_days": 0.0})
    assert writer.prune() > 0  # every entry and, with them, the image
    assert not list((tmp_path / "log" / "images").rglob("*.jpg"))
    _log(writer, [image], _probs(1), np.zeros((1, 4)))
    entry = predlog.read_log(writer.store).entries[-1]
    assert Counting.lookups == 2 and predlog.image_bytes(writer.store, entry) == image


def test_retention_drops_the_oldest_entries_by_size_and_by_age(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(predlog, "GRACE_S", 0.0)
    writer = _writer(tmp_path, max_log_bytes=30_000)
    rng = np.random.default_rng(0)
    for _ in range(6):  # ~6 KB per batch of three noisy JPEGs
        pixels = rng.integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)
        _log(writer, [_jpeg(p) for p in pixels], _probs(3), rng.normal(size=(3, 8)))
        time.sleep(0.02)
    writer.prune()  # the writer prunes as it goes, too
    left = sum(f.stat().st_size for f in (tmp_path / "log").rglob("*") if f.is_file())
    assert writer.stats.pruned_files > 0 and left <= 30_000
    view = predlog.read_log(writer.store)
    assert 0 < len(view) < 18
    assert all(predlog.image_bytes(writer.store, e) is not None for e in view.entries)
    # by age: everything older than the limit goes
    assert predlog.prune(writer.store, 10**9, max_age_s=0.0)[0] > 0
    assert len(predlog.read_log(writer.store)) == 0


def test_a_full_queue_drops_entries_without_blocking(tmp_path) -> None:
    writer = _writer(tmp_path, max_pending=2)
    pixels = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    started = time.monotonic()
    writer.record([(f"{i}.jpg", _jpeg(p)) for i, p in enumerate(pixels)], "1", CLASSES,
                  _probs(5), np.zeros((5, 4)))  # fmt: skip
    assert time.monotonic() - started < 1.0
    assert writer.stats.dropped == 3
    assert writer.flush() == 2 and writer.stats.logged == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_full_disk_frees_the_oldest_entries_and_never_raises(tmp_path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(volume)], check=True)
    try:
        writer = predlog.LogWriter(Store(str(volume)), _config(), start=False)
        rng = np.random.default_rng(0)
        for _ in range(40):  # ~40 x 3 x 2 KB: well over 256 KB
            pixels = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
            _log(writer, [_jpeg(p) for p in pixels], _probs(3), rng.normal(size=(3, 8)))
        assert writer.stats.logged > 60  # it kept logging by freeing the oldest entries
        assert writer.stats.pruned_files > 0
        view = predlog.read_log(writer.store)
        assert len(view) > 0 and view.unreadable == 0
    finally:
        subprocess.run(["umount", str(volume)], check=True)


# --------------------------------------------------------------------------- drift


def test_drift_finds_inverted_colours_and_not_more_of_the_same(sample) -> None:
    from pipelines.loop.drift import compare
    from pipelines.loop.features import features_and_probs

    model, reference = sample["loaded"].model, sample["reference"]

    def check(x):
        probs, feats = features_and_probs(model, x)
        return compare(reference, feats, [CLASSES[i] for i in probs.argmax(1)], probs.max(1), 0.01)

    same = check(sample["x"])
    inverted = check(255 - sample["x"][::3])
    assert not same.drifted, same.summary()
    assert inverted.drifted and inverted.mmd > 3 * same.mmd, inverted.summary()
    assert inverted.confidence_shift < 0 and len(inverted.most_drifted) == 16


# --------------------------------------------------------------------------- intake


def _batch_folder(folder: Path, paths: list[Path], labels: list[str]) -> Path:
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / label / f"{i:04d}.jpg")
    return folder


def _check(tmp_path: Path, source: Path, sample: dict, **policy):
    from pipelines.data.examine import ChampionView
    from pipelines.data.intake import Intake, IntakePaths, check_batch, discard

    paths = IntakePaths(tmp_path / "st", tmp_path / "q", tmp_path / "acc", tmp_path / "lock")
    view = ChampionView(sample["loaded"], "1", sample["reference"])
    policy = ValidationPolicy(**{"min_images_per_new_class": 5, **policy})  # no dataset yet
    checked = check_batch(
        source, tmp_path / "dataset", Intake(paths, IngestLimits(), policy),
        progress=lambda m: None, view=view,
    )  # fmt: skip
    discard(checked)
    return checked.report


def test_cleanlab_finds_the_flipped_labels_and_the_setting_decides(tmp_path, sample) -> None:
    rng = np.random.default_rng(0)
    labels = list(sample["labels"])
    flipped = set(rng.choice(len(labels), len(labels) // 12, replace=False).tolist())  # 8%
    for i in flipped:
        labels[i] = CLASSES[(CLASSES.index(labels[i]) + rng.integers(1, 9)) % 9]
    batch = _batch_folder(tmp_path / "batch", sample["paths"], labels)
    by_name = {f"{label}/{i:04d}.jpg": i for i, label in enumerate(labels)}

    warned = _check(tmp_path / "warn", batch, sample)
    found = {by_name[x["path"]] for x in warned.label_issues}
    hits = len(found & flipped)
    assert warned.passed and hits / len(found) >= 0.6 and hits / len(flipped) >= 0.6
    assert next(r for r in warned.rules if r.rule == "label_issues").severity == "warn"
    assert "data:image/png;base64," in warned.to_html() and warned.drift is not None

    excluded = _check(tmp_path / "exclude", batch, sample, label_issues="exclude")
    assert excluded.passed
    assert {x["path"] for x in excluded.skipped} == {x["path"] for x in warned.label_issues}

    refused = _check(
        tmp_path / "refuse", batch, sample, label_issues="refuse", label_issues_max_share=0.02
    )
    assert not refused.passed
    assert [r.rule for r in refused.failed_rules] == ["label_issues"]


# --------------------------------------------------------------------------- the queue


def test_the_budget_and_the_champion_choose_typical_or_uncertain_picks() -> None:
    assert labelqueue.strategy(400, 9, 0.55)[0] == "typical"  # a weak champion
    assert labelqueue.strategy(400, 9, 0.85)[0] == "uncertain"
    assert labelqueue.strategy(50, 9, 0.85)[0] == "uncertain"  # few labels, a learned model
    assert labelqueue.strategy(50, 9, None)[0] == "typical"  # not known: the budget decides
    assert labelqueue.strategy(400, 9, None)[0] == "uncertain"
    assert "weak, 55% on its holdout" in labelqueue.strategy(400, 9, 0.55)[1]
    # novel picks: a third of a small budget, half once the other half holds 10 per class
    assert [labelqueue.novel_every(n, 9) for n in (20, 100, 179, 180, 400)] == [3, 3, 3, 2, 2]


def test_the_queue_puts_unknown_and_uncertain_images_first_and_spreads_them(
    tmp_path, sample, monkeypatch
) -> None:
    from pipelines.loop.features import features_and_probs

    model = sample["loaded"].model
    known_x = sample["x"][::4]  # 90 known-class images
    x = np.concatenate([known_x, sample["trucks"][:20], np.repeat(sample["trucks"][20:21], 10, 0)])
    images = [_jpeg(p) for p in x]
    images[-10:] = [images[-10] + bytes([i]) for i in range(10)]  # ten near-copies, new ids
    probs, feats = features_and_probs(model, x)
    writer = _writer(tmp_path)
    _log(writer, images, probs, feats)
    view = predlog.read_log(writer.store)
    assert len(view) == 120
    ids = [e["id"] for e in view.entries]
    margins = np.array([e["margin"] for e in view.entries])

    # a small budget (20 labels, 9 classes): typical images, and every third pick the
    # most novel left (the far ones first)
    picks = labelqueue.rank(view, sample["reference"], 20)
    picked = [ids.index(p.id) for p in picks]
    assert len(set(picked)) == 20
    assert sum(i >= 110 for i in picked) <= 2  # ten near-copies cost at most two labels
    novel = ("far from the training data", "among the most novel left")
    assert all(r.startswith(("typical", *novel)) for p in picks for r in p.reasons)
    assert sum(p.reasons[0].startswith(novel) for p in picks) == 6  # picks 3, 6, ..., 18
    assert any("far from the training data" in r for p in picks for r in p.reasons)
    assert sum(i >= 90 for i in picked) >= 5  # the unknown class: at least its share (5)

    # a competent champion: uncertain and diverse, whatever the budget; and (the budget
    # made large for the classes) every second pick the most novel
    monkeypatch.setattr(labelqueue, "TYPICAL_PER_CLASS", 1)
    picks = labelqueue.rank(view, sample["reference"], 20, accuracy=0.9)
    picked = [ids.index(p.id) for p in picks]
    assert len(set(picked)) == 20 and sum(i >= 110 for i in picked) <= 2
    uncertain = [i for p, i in zip(picks, picked, strict=True) if "uncertain" in p.reasons[0]]
    assert len(uncertain) == 10 and margins[uncertain].mean() < np.median(margins) / 2
    assert "a competent champion, 90% on its holdout" in picks[0].reasons[0]

    # more than the log holds: everything unlabelled, no error; excluded ids are skipped
    assert len(labelqueue.rank(view, sample["reference"], 500)) == 120
    assert len(labelqueue.rank(view, None, 500, exclude=set(ids[:100]))) == 20


def test_an_exported_skeleton_comes_back_in_as_a_batch(tmp_path, sample) -> None:
    from pipelines.loop.features import features_and_probs

    x = sample["x"][::6]
    probs, feats = features_and_probs(sample["loaded"].model, x)
    writer = _writer(tmp_path)
    _log(writer, [_jpeg(p) for p in x], probs, feats)
    items = labelqueue.rank(predlog.read_log(writer.store), sample["reference"], 50)
    out, written, gone = labelqueue.export(items, writer.store, tmp_path / "next.zip")
    assert written == 50 and gone == []
    with zipfile.ZipFile(out) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
        assert len([n for n in archive.namelist() if n.startswith("images/")]) == 50
    assert [r["label"] for r in rows] == [i.guess for i in items]  # pre-filled guesses
    report = _check(  # the real intake check (an empty dataset: any class count will do)
        tmp_path / "in", out, sample, min_images_per_class=1, min_images_per_new_class=1
    )
    assert report.passed, report.summary()
    assert sum(report.class_counts.values()) == 50

    # an image retention removed is left out and named
    Path(writer.store.path(items[0].entry["image"])).unlink()
    _, written, gone = labelqueue.export(items, writer.store, tmp_path / "again")
    assert written == 49 and gone == [items[0].id]
    with pytest.raises(FileExistsError):
        labelqueue.export(items, writer.store, tmp_path / "again")


class _Registry:
    """The two registry questions the live check asks, answered as a test says."""

    def __init__(self, version, features) -> None:
        self.version, self.features = version, features

    def alias_version(self, alias: str):
        return self.version

    def training_features(self, version: str):
        return self.features


def test_the_live_check_says_why_it_cannot_check(tmp_path, sample) -> None:
    from pipelines.loop import monitor

    store = Store(str(tmp_path / "log"))
    none = monitor.check_live(_Registry(None, None), store, 100, 0.01)
    assert none.status == "no-champion" and not none.drifted
    old = monitor.check_live(_Registry("4", None), store, 100, 0.01)
    assert old.status == "no-reference" and "v4 has no training features" in old.message
    empty = monitor.check_live(_Registry("4", sample["reference"].to_bytes()), store, 100, 0.01)
    assert empty.status == "no-data" and "holds 0 answers of champion v4" in empty.message


@pytest.mark.e2e
def test_more_like_these_finds_the_unseen_class_from_a_few_seeds(
    tmp_path, sample, refit_env, imagenet_weights
) -> None:
    """Seeds in the ImageNet embedding (built for real from the packaged weights): logged
    trucks and a truck photo from elsewhere bring back trucks the champion calls cars."""
    from pipelines.loop.features import features_and_probs
    from pipelines.models.imagenet import imagenet_embedding
    from tests.conftest import git_repo

    x = np.concatenate([sample["x"][::2], sample["trucks"][:40]])  # 180 known, 40 trucks
    probs, feats = features_and_probs(sample["loaded"].model, x)
    writer = _writer(tmp_path)
    _log(writer, [_jpeg(p) for p in x], probs, feats)
    view = predlog.read_log(writer.store)
    ids = [e["id"] for e in view.entries]
    trucks, seeds = set(ids[180:]), ids[180:183]
    elsewhere = ("truck.jpg", _jpeg(sample["trucks"][50]))  # never logged
    weights = Path(refit_env["REFIT_WORKSPACE"]) / "weights"  # the CLI's too
    shutil.copytree(imagenet_weights, weights)
    embed = imagenet_embedding(weights, progress=lambda m: None)
    quiet = dict(progress=lambda m: None)

    picks = newclass.like(view, writer.store, embed, seeds, [elsewhere], 30, **quiet)
    assert len(picks) == 30 and not set(seeds) & {p.id for p in picks}
    found = [p.id in trucks for p in picks]
    assert np.mean(found[:10]) >= 0.8  # 37 trucks left among 217 images (17%)
    assert picks[0].reasons[0].startswith("like the seeds (similarity")
    size = (embed.input_px, embed.input_px)  # the champion's training sample: what seeds are not
    known = embed(
        np.stack([np.asarray(Image.fromarray(p).resize(size)) for p in sample["x"][1::2]])
    )
    learned = newclass.like(view, writer.store, embed, seeds, [elsewhere], 30, known=known, **quiet)
    assert np.mean([p.id in trucks for p in learned][:10]) >= 0.8
    assert learned[0].reasons[0].startswith("like the seeds, unlike the training images")
    with pytest.raises(ValueError, match="not in the prediction log"):
        newclass.like(view, writer.store, embed, ["0" * 64], [], 5, **quiet)
    with pytest.raises(ValueError, match=r"notes\.txt: not a JPEG"):
        newclass.like(view, writer.store, embed, [], [("notes.txt", b"hello")], 5, **quiet)
    with pytest.raises(ValueError, match="more like what"):
        newclass.like(view, writer.store, embed, [], [], 5, **quiet)

    env = {**refit_env, "REFIT_LOOP__LOG_URL": str(tmp_path / "log"),
           "REFIT_DVC_REPO": str(git_repo(tmp_path / "repo")),
           "REFIT_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    refit = str(Path(sys.executable).parent / "refit")
    args = [refit, "label", "like", *[a for s in seeds for a in ("--seed", s)], "--n", "10"]
    done = subprocess.run([*args, "--label", "pickup truck", "--out", str(tmp_path / "like")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "like" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["label"] for r in rows} == {"pickup truck"}
    assert np.mean([r["image_id"] in trucks for r in rows]) >= 0.8
    unsafe = subprocess.run([*args, "--label", "<b>", "--out", str(tmp_path / "bad")],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert unsafe.returncode == 1 and "a class name is 1-64" in unsafe.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.e2e
def test_the_new_class_channel_groups_what_the_training_data_lacks(
    tmp_path, sample, refit_env, imagenet_weights, monkeypatch
) -> None:
    from pipelines.loop.features import features_and_probs
    from pipelines.models.imagenet import imagenet_embedding

    weights = Path(refit_env["REFIT_WORKSPACE"]) / "weights"  # the CLI's too
    shutil.copytree(imagenet_weights, weights)
    embed = imagenet_embedding(weights, progress=lambda m: None)

    def at_224(x: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(p).resize((224, 224))) for p in x])

    training = embed(at_224(sample["x"][1::2]))  # 180 known-class images
    x = np.concatenate([sample["x"][::2], sample["trucks"]])  # 180 known, 60 trucks
    probs, feats = features_and_probs(sample["loaded"].model, x)
    writer = _writer(tmp_path)
    _log(writer, [_jpeg(p) for p in x], probs, feats)
    view = predlog.read_log(writer.store)
    trucks = {e["id"] for e in view.entries[180:]}

    found = newclass.groups(view, writer.store, embed, training, progress=lambda m: None)
    assert found, "no group"
    first = {item.id for item in found[0]}
    # a small log (60 trucks, some near the training cars): a group of trucks stands out
    assert len(first & trucks) >= 10 and len(first - trucks) <= 0.2 * len(first)
    assert "alike, unlike any class" in found[0][0].reasons[0]
    _, written, _ = labelqueue.export(found[0], writer.store, tmp_path / "g1", "group-1")
    assert written == len(found[0])

    # the CLI: the dataset's training images against the log, a skeleton per group
    from tests.conftest import git_repo

    batch = tmp_path / "batch"
    for i, (p, label) in enumerate(zip(sample["x"][1::2], sample["labels"][1::2], strict=True)):
        (batch / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(batch / label / f"{i:04d}.png")
    env = {**refit_env, "REFIT_LOOP__LOG_URL": str(tmp_path / "log"),
           "REFIT_DVC_REPO": str(git_repo(tmp_path / "repo")),
           "REFIT_VALIDATION__MIN_IMAGES_PER_NEW_CLASS": "3"}  # fmt: skip
    refit = str(Path(sys.executable).parent / "refit")
    added = subprocess.run([refit, "data", "add", str(batch)], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    done = subprocess.run([refit, "label", "groups", "--out", str(tmp_path / "groups")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "group 1:" in done.stdout
    assert "logged images" not in done.stdout  # embedded once, by the call above: kept
    assert "did not answer" in done.stdout  # no registry running: the dataset's images serve
    with open(tmp_path / "groups" / "group-1" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert np.mean([r["image_id"] in trucks for r in rows]) >= 0.8

    # "more like these" from the CLI, against the dataset's training images (a registry
    # without a champion: novelty needs only the dataset's training images)
    env["REFIT_MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seeds = [a for e in view.entries[180:183] for a in ("--seed", e["id"])]
    like = [refit, "label", "like", *seeds, "--label", "truck", "--n", "20"]
    done = subprocess.run([*like, "--out", str(tmp_path / "like")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "like" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert np.mean([r["image_id"] in trucks for r in rows]) >= 0.6  # random: 24%
    assert all(r["why"].startswith("like the seeds, unlike the training images") for r in rows)

    # the queue in the ImageNet embedding: logged images embedded once, kept in the log
    args = [refit, "label", "next", "--embedding", "imagenet", "--n", "24"]
    done = subprocess.run([*args, "--out", str(tmp_path / "next.zip")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "logged images" not in done.stdout
    assert list((tmp_path / "log" / "embeddings").glob("imagenet-*.npz"))
    with zipfile.ZipFile(tmp_path / "next.zip") as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
    assert sum(r["image_id"] in trucks for r in rows) >= 9  # random: 6 (25% of the log)
    assert any(r["why"].startswith("far from the training data") for r in rows)
    wrong = subprocess.run([*args[:3], "--embedding", "pixels", "--out", str(tmp_path / "x")],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert wrong.returncode == 1 and "give champion or imagenet" in wrong.stderr
    # the setting (not the option) names ImageNet, but nothing to compare with: the queue
    # goes on in the champion's features, saying so
    bare = {**env, "REFIT_WORKSPACE": str(tmp_path / "bare"),
            "REFIT_DVC_REPO": str(git_repo(tmp_path / "empty")),
            "REFIT_LOOP__QUEUE_EMBEDDING": "imagenet"}  # fmt: skip
    shutil.copytree(imagenet_weights, tmp_path / "bare" / "weights")
    done = subprocess.run([*args[:3], "--n", "5", "--out", str(tmp_path / "bare.zip")], env=bare,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Not in the ImageNet embedding (the dataset has no training images" in done.stdout

    # loop.queue_embedding = imagenet: a version registered so keeps its training sample's
    # ImageNet embedding, and the Label page's routes choose in that embedding
    from core.settings import get_settings
    from pipelines import workspace
    from pipelines.judge.candidate import judge_model_file
    from pipelines.judge.registry_writes import CandidateRun
    from pipelines.loop.features import TrainingFeatures
    from serving import label

    for name, value in {**env, "REFIT_LOOP__QUEUE_EMBEDDING": "imagenet"}.items():
        if name.startswith("REFIT_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    label._EMBEDDINGS.clear(), label._training_features.cache_clear()
    settings, quiet = get_settings(), dict(progress=lambda m: None)
    registry = workspace.registry(settings)
    judged = judge_model_file(sample["loaded"], workspace.dataset(settings), registry,
                              settings.gate, CandidateRun("the built-in model"),
                              embed=workspace.loop_embedding(settings, lambda m: None))  # fmt: skip
    assert judged.promoted, judged.decision.reasons
    kept = TrainingFeatures.from_bytes(registry.training_features(judged.version))
    assert kept.imagenet is not None and kept.imagenet.shape == (len(kept.labels), 1280)
    built = next(weights.glob("embedding-*.onnx"))
    built.unlink()  # as on a serving host of its own: fetched from the log's store
    try:
        assert label._loop().embed is not None and built.is_file()
        seeds = [e["id"] for e in view.entries[180:183]]
        liked = label._like(seeds, 20)["items"]
        assert np.mean([item["id"] in trucks for item in liked]) >= 0.6  # as the CLI's
        assert liked[0]["reasons"][0].startswith("like the seeds, unlike the training images")
        grouped = label._groups()["groups"]
        assert grouped and np.mean([i["id"] in trucks for i in grouped[0]["items"]]) >= 0.8
        queue = label._queue(24)["items"]
        assert sum(item["id"] in trucks for item in queue) >= 9  # random: 6
        # the CLI compares with the same stored sample, not a sample of its own
        done = subprocess.run([*like, "--out", str(tmp_path / "like-stored")], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"the champion's training sample ({len(kept.labels)} images" in done.stdout
        with open(tmp_path / "like-stored" / "labels.csv") as f:
            assert np.mean([r["image_id"] in trucks for r in csv.DictReader(f)]) >= 0.6
    finally:
        label._EMBEDDINGS.clear(), label._training_features.cache_clear()
    (tmp_path / "notes.txt").write_text("a file, not a folder: the log's store refuses")
    monkeypatch.setenv("REFIT_LOOP__LOG_URL", str(tmp_path / "notes.txt"))
    get_settings.cache_clear()
    said: list[str] = []
    assert workspace.loop_embedding(get_settings(), said.append) is not None  # goes on
    assert said and "not shared with serving hosts yet" in said[-1]

    # a log like the training data: nothing stands apart, and the channel says so (empty)
    known_only = _writer(tmp_path / "known")
    _log(known_only, [_jpeg(p) for p in sample["x"][::2]], probs[:180], feats[:180])
    view = predlog.read_log(known_only.store)
    assert newclass.groups(view, known_only.store, embed, training, **quiet) == []
