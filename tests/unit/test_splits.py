"""The split and merge rules: a class with a holdout keeps it fixed, a new class gets a
seeded share held out that does not depend on file order, and only classes the dataset
trains on are judged."""

from __future__ import annotations

import pandas as pd

from core.policies import SplitPolicy
from pipelines.data.dataset import assign_splits, class_counts, evaluation_holdout

POLICY = SplitPolicy(holdout_share=0.2, seed=7)


def manifest(label: str, n: int, split: str | None = None, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"{label}/{i}.png" for i in range(start, start + n)],
            "label": label,
            "split": split,
            "sha256": [f"{label}-{i:04d}" for i in range(start, start + n)],
        }
    )


def index_of(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["split", "label"])


def test_a_new_class_gets_its_share_held_out() -> None:
    batch = manifest("truck", 50)
    splits = assign_splits(batch, index_of([]), POLICY)
    assert (splits == "holdout").sum() == 10 and (splits == "train").sum() == 40


def test_a_class_with_a_holdout_only_gets_training_images() -> None:
    index = index_of([("holdout", "cat"), ("train", "cat")])
    batch = pd.concat([manifest("cat", 30), manifest("dog", 10)], ignore_index=True)
    splits = assign_splits(batch, index, POLICY)
    assert set(splits[batch["label"] == "cat"]) == {"train"}
    assert (splits[batch["label"] == "dog"] == "holdout").sum() == 2


def test_the_held_out_images_do_not_depend_on_file_order() -> None:
    batch = manifest("truck", 40)
    shuffled = batch.sample(frac=1, random_state=3).reset_index(drop=True)
    held = set(batch.loc[assign_splits(batch, index_of([]), POLICY) == "holdout", "sha256"])
    again = assign_splits(shuffled, index_of([]), POLICY)
    assert held == set(shuffled.loc[again == "holdout", "sha256"])


def test_an_explicit_split_is_kept_and_a_tiny_class_still_holds_one_out() -> None:
    batch = pd.concat(
        [manifest("cat", 5, "train"), manifest("cat", 2, "holdout", 5), manifest("owl", 2)],
        ignore_index=True,
    )
    splits = assign_splits(batch, index_of([]), POLICY)
    assert splits[:7].tolist() == ["train"] * 5 + ["holdout"] * 2
    assert sorted(splits[7:]) == ["holdout", "train"]


def test_only_classes_with_training_images_are_judged() -> None:
    index = index_of(
        [("train", "cat"), ("holdout", "cat"), ("holdout", "truck"), ("holdout", "truck")]
    )
    assert evaluation_holdout(index)["label"].tolist() == ["cat"]
    assert class_counts(index) == {"holdout": {"cat": 1, "truck": 2}, "train": {"cat": 1}}


def test_staging_left_by_killed_intakes_is_swept(tmp_path) -> None:
    import os
    import time

    from pipelines.data.intake import sweep_staging

    old, fresh = tmp_path / "batch-old", tmp_path / "batch-fresh"
    for folder in (old, fresh):
        (folder / "files").mkdir(parents=True)
    stale = time.time() - 7200
    os.utime(old, (stale, stale))
    assert sweep_staging(tmp_path, older_than_s=3600) == ["swept batch-old from staging"]
    assert not old.exists() and fresh.exists()  # a check still running is left alone


def test_staging_whose_owner_process_died_is_swept_at_once(tmp_path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from pipelines.data.ingest import STAGING_OWNER
    from pipelines.data.intake import sweep_staging

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, alive = tmp_path / "batch-dead", tmp_path / "batch-alive"
    for folder, pid in ((dead, gone.stdout.strip()), (alive, str(os.getpid()))):
        (folder / "files").mkdir(parents=True)
        (folder / STAGING_OWNER).write_text(f"{socket.gethostname()}:{pid}")
    assert sweep_staging(tmp_path) == ["swept batch-dead from staging"]
    assert alive.exists()
