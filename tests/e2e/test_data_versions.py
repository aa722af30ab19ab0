"""Real DVC in a temporary git repo: merge + version + checkout round trip, quarantine, and
crashes in the middle of a merge that leave the dataset as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from core.objectstore import Store
from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
from pipelines.data.dataset import load_index, recover_dataset
from pipelines.data.intake import Intake, IntakePaths, add_batch
from pipelines.data.versions import DvcStore
from tests.conftest import git_repo, write_class_folders

pytestmark = pytest.mark.e2e

POLICY = ValidationPolicy(min_images_per_class=2, min_images_per_new_class=5)
SPLIT = SplitPolicy(holdout_share=0.2, seed=7)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[DvcStore, IntakePaths]:
    root = git_repo(tmp_path / "repo")
    work = tmp_path / "workspace"
    store = DvcStore(
        repo=root,
        dataset_dir=root / "data",
        remote=str(work / "remote"),
        cache_dir=work / "cache",
        log=Store(str(work)),
    )
    paths = IntakePaths(
        staging=work / "staging",
        quarantine=work / "quarantine",
        accepted=work / "batches",
        lock=work / "intake.lock",
    )
    return store, paths


def rules(paths: IntakePaths) -> Intake:
    return Intake(paths, IngestLimits(), POLICY, SPLIT)


def add(source: Path, repo: tuple[DvcStore, IntakePaths]):
    store, paths = repo
    return add_batch(source, store, rules(paths), progress=lambda m: None)


def seed_batch(root: Path) -> Path:
    """A first batch in Refit's own layout, with an explicit holdout."""
    write_class_folders(root / "train", {"cat": 6, "dog": 6}, seed=1)
    write_class_folders(root / "holdout", {"cat": 2, "dog": 2}, seed=2)
    return root


def dataset_state(store: DvcStore) -> tuple[pd.DataFrame, set[str]]:
    files = {
        str(p.relative_to(store.dataset_dir)) for p in store.dataset_dir.rglob("*") if p.is_file()
    }
    return load_index(store.dataset_dir), files


def test_merge_version_checkout_round_trip(tmp_path: Path, repo) -> None:
    store, paths = repo
    first = add(seed_batch(tmp_path / "seed"), repo)
    assert first.version is not None and first.report.passed
    v1_index, v1_files = dataset_state(store)
    assert v1_index.groupby("split").size().to_dict() == {"holdout": 4, "train": 12}

    second = add(write_class_folders(tmp_path / "b2", {"cat": 3, "dog": 3, "bird": 10}, 3), repo)
    assert second.report.new_classes == ["bird"]
    assert second.added == {"holdout": {"bird": 2}, "train": {"bird": 8, "cat": 3, "dog": 3}}
    v2_index, v2_files = dataset_state(store)
    old_holdout = v1_index[v1_index["split"] == "holdout"].reset_index(drop=True)
    still = v2_index[(v2_index["split"] == "holdout") & (v2_index["label"] != "bird")]
    pd.testing.assert_frame_equal(still.reset_index(drop=True), old_holdout)  # holdout fixed
    assert [v.version for v in store.versions()] == [first.version.version, second.version.version]
    assert store.current_version() == second.version.version

    store.checkout(first.version.version[:8])
    assert dataset_state(store)[1] == v1_files
    pd.testing.assert_frame_equal(load_index(store.dataset_dir), v1_index)
    store.checkout(second.version.version)
    assert dataset_state(store)[1] == v2_files

    # A failing batch goes to quarantine with its report; nothing else changes.
    dup = tmp_path / "dup" / "cat"
    dup.mkdir(parents=True)
    for i, path in enumerate(sorted((store.dataset_dir / "train" / "cat").iterdir())[:3]):
        (dup / f"{i}.png").write_bytes(path.read_bytes())
    rejected = add(tmp_path / "dup", repo)
    assert rejected.version is None and rejected.quarantined is not None
    assert (rejected.quarantined / "report.html").is_file()
    assert len(list((rejected.quarantined / "files" / "cat").iterdir())) == 3
    assert store.current_version() == second.version.version
    assert dataset_state(store)[1] == v2_files
    assert len(store.versions()) == 2
    assert list(paths.staging.iterdir()) == []


def test_checkout_of_unknown_version_changes_nothing(tmp_path: Path, repo) -> None:
    store, _ = repo
    add(seed_batch(tmp_path / "seed"), repo)
    before = dataset_state(store)[1]
    with pytest.raises(Exception, match="no dataset version matches"):
        store.checkout("feedbeef")
    assert dataset_state(store)[1] == before


def test_checkout_of_a_version_whose_data_is_gone_changes_nothing(tmp_path: Path, repo) -> None:
    """The version is recorded, but its new files are in neither the cache nor the remote
    (a pruned remote): the checkout fails saying so, and the data and data.dvc stay."""
    import json

    store, _ = repo
    first = add(seed_batch(tmp_path / "seed"), repo)
    second = add(write_class_folders(tmp_path / "b2", {"cat": 3, "dog": 3, "bird": 10}, 3), repo)
    store.checkout(first.version.version)
    before, pointer = dataset_state(store)[1], store.dvc_file.read_bytes()

    def objects(root: Path, md5: str) -> Path:  # DVC 3's layout, the same in cache and remote
        return root / "files" / "md5" / md5[:2] / md5[2:]

    listing = json.loads(objects(store.cache_dir, second.version.version).read_text())
    birds = [entry["md5"] for entry in listing if "bird" in entry["relpath"]]
    for md5 in birds:
        for root in (store.cache_dir, Path(store.remote)):
            objects(root, md5).unlink()
    with pytest.raises(Exception, match="dvc pull"):
        store.checkout(second.version.version)
    assert dataset_state(store)[1] == before
    assert store.dvc_file.read_bytes() == pointer


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import pipelines.data.dataset as dataset
    import pipelines.data.versions as versions
    from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
    from pipelines.data.intake import Intake, IntakePaths, add_batch

    point, repo, work, batch = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "building":  # killed after a few files of the new state were written
        link, count = dataset._link_or_copy, [0]
        def slow(src, dest):
            link(src, dest)
            count[0] += 1
            if count[0] == 5:
                die()
        dataset._link_or_copy = slow
    elif point == "swap":  # killed between the two renames: no data/ at all
        rename = Path.rename
        def crash_after_first(self, target):
            result = rename(self, target)
            if ".previous-" in str(target):
                die()
            return result
        Path.rename = crash_after_first
    elif point == "version":  # killed after the swap, before DVC ran
        versions.DvcStore.add_version = die
    elif point == "record":  # killed after `dvc add` + push, before the version was recorded
        versions.Store.write_bytes = die
    store = versions.DvcStore(repo, repo / "data", str(work / "remote"), work / "cache",
                              versions.Store(str(work)))
    paths = IntakePaths(work / "staging", work / "quarantine", work / "batches",
                        work / "intake.lock")
    add_batch(Path(batch), store, Intake(paths, IngestLimits(),
              ValidationPolicy(min_images_per_class=2, min_images_per_new_class=5),
              SplitPolicy(holdout_share=0.2, seed=7)), progress=lambda m: None)
""")


@pytest.mark.parametrize("point", ["building", "swap", "version", "record"])
def test_killed_merge_leaves_dataset_unchanged(tmp_path: Path, repo, point: str) -> None:
    store, paths = repo
    first = add(seed_batch(tmp_path / "seed"), repo)
    before = dataset_state(store)
    batch = write_class_folders(tmp_path / "b2", {"cat": 4, "bird": 6}, seed=5)

    crashed = subprocess.run(
        [sys.executable, "-c", CRASHER, point, str(store.repo), str(paths.lock.parent), str(batch)],
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == -9, crashed.stderr

    recover_dataset(store.dataset_dir)
    store.restore_pointer()
    after = dataset_state(store)
    pd.testing.assert_frame_equal(after[0], before[0])
    assert after[1] == before[1]
    assert store.current_version() == first.version.version
    assert len(store.versions()) == 1

    retried = add(batch, repo)  # the batch is still there to be retried, and goes in
    assert retried.version is not None and len(store.versions()) == 2


def test_killed_after_versioning_the_merge_is_kept_and_recognised(tmp_path: Path, repo) -> None:
    """Killed at the real failpoint `merge.versioned` (the version recorded, the old state
    not yet dropped): recovery keeps the new version, and the same batch again is found
    already merged, never versioned twice."""
    store, paths = repo
    add(seed_batch(tmp_path / "seed"), repo)
    batch = write_class_folders(tmp_path / "b2", {"cat": 4, "bird": 6}, seed=5)
    drill = tmp_path / "drill"
    drill.write_text("merge.versioned kill\n")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHER, "failpoint", str(store.repo), str(paths.lock.parent),
         str(batch)],
        capture_output=True, text=True, env={**os.environ, "REFIT_FAILPOINTS": str(drill)},
    )  # fmt: skip
    assert crashed.returncode == -9, crashed.stderr
    assert len(store.versions()) == 2
    again = add(batch, repo)  # recovers first, then recognises the batch by its content id
    assert again.version is not None and again.version.version == store.versions()[-1].version
    assert len(store.versions()) == 2 and store.current_version() == again.version.version
    assert sorted(load_index(store.dataset_dir)["label"].unique()) == ["bird", "cat", "dog"]
    assert not [p for p in store.dataset_dir.parent.iterdir() if ".previous-" in p.name]


def test_a_merged_class_is_removed_as_a_recorded_version(tmp_path: Path, repo) -> None:
    from pipelines.data.intake import remove_class

    store, paths = repo
    add(seed_batch(tmp_path / "seed"), repo)
    merged = add(write_class_folders(tmp_path / "b2", {"cat": 3, "bird": 10}, seed=3), repo)
    with_bird = dataset_state(store)
    with pytest.raises(ValueError, match="no class 'fish'"):
        remove_class(store, paths, "fish", "never merged", progress=lambda m: None)
    with pytest.raises(ValueError, match="say why"):
        remove_class(store, paths, "bird", " ", progress=lambda m: None)
    assert dataset_state(store)[1] == with_bird[1] and len(store.versions()) == 2

    removed = remove_class(store, paths, "bird", "mislabelled cats", progress=lambda m: None)
    index, files = dataset_state(store)
    assert "bird" not in set(index["label"]) and not any("bird" in f for f in files)
    assert len(index) == len(with_bird[0]) - 10
    assert store.versions()[-1] == removed and removed.note == "removed bird: mislabelled cats"
    assert "bird" not in removed.counts["train"] and store.current_version() == removed.version
    assert not list(store.dataset_dir.parent.glob(".data.*"))

    store.checkout(merged.version.version)  # the class is still in the earlier version
    assert dataset_state(store)[1] == with_bird[1]


def test_an_object_store_down_during_push_changes_nothing(
    tmp_path: Path, repo, s3_server, monkeypatch
) -> None:
    """The DVC remote is an S3 bucket whose server is down when a merge pushes: the merge is
    rolled back and nothing is recorded; with the store back the same batch goes in, and a
    second copy of the dataset on a fresh disk (another worker) pulls it from S3."""
    from dataclasses import replace

    from pipelines.data.versions import DvcError
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # DVC gives up at once on the dead endpoint
    store, paths = repo
    bucket = s3_server.bucket("refit-remote")
    up = replace(store, remote=f"{bucket}/dvc", endpoint_url=s3_server.endpoint)
    first = add_batch(seed_batch(tmp_path / "seed"), up, rules(paths),
                      progress=lambda m: None)  # fmt: skip
    before = dataset_state(store)
    down = replace(up, endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    batch = write_class_folders(tmp_path / "b2", {"cat": 3, "bird": 6}, seed=5)
    with pytest.raises(DvcError, match="push"):
        add_batch(batch, down, rules(paths), progress=lambda m: None)
    after = dataset_state(store)
    pd.testing.assert_frame_equal(after[0], before[0])
    assert after[1] == before[1] and len(store.versions()) == 1
    assert store.current_version() == first.version.version

    second = add_batch(batch, up, rules(paths), progress=lambda m: None)
    assert second.version is not None and len(store.versions()) == 2
    elsewhere = git_repo(tmp_path / "other-host")
    fresh = replace(up, repo=elsewhere, dataset_dir=elsewhere / "data",
                    cache_dir=tmp_path / "other-cache")  # fmt: skip
    from pipelines.data.intake import sync

    sync(fresh, replace(paths, lock=tmp_path / "other.lock"), progress=lambda m: None)
    assert fresh.current_version() == second.version.version
    assert dataset_state(fresh)[1] == dataset_state(store)[1]
