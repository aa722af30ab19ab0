"""The dataset: its on-disk layout, the fixed holdout, atomic merges and quarantine.

Layout of the dataset directory (tracked by DVC as one directory output)::

    data/
      train/<class>/<sha256[:16]><ext>
      holdout/<class>/<sha256[:16]><ext>
      index.csv        split, label, path, sha256, batch_id, source_path, width, height

Files are named by content, so merges never collide and any image can be found by hash;
``index.csv`` maps each back to its batch and original name.

A class's holdout is fixed once it has one: later batches only add training images to it.
A class that has no holdout yet gets a seeded, stratified share of its images held out
(unless the batch brings an explicit ``holdout/`` part).

Merging is atomic: the new state is built beside the dataset (existing files hard-linked,
new ones copied), then swapped in by renames. The previous state is kept until the caller
commits the merge (after versioning) or rolls it back; :func:`recover_dataset` finishes or
undoes any merge a crash interrupted, so the dataset is always either the old or the new
state, and the new one only once it is versioned.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from core.policies import SplitPolicy
from pipelines.data.ingest import StagedBatch
from pipelines.data.validate import Reference, ValidationReport
from pipelines.images.decode import ImageSet, images_from_rows

INDEX_FILE = "index.csv"
SKIPPED_FILE = "skipped.csv"  # files batches brought that were left out, and why
SKIPPED_COLUMNS = ["batch_id", "path", "rule", "detail"]
INDEX_COLUMNS = ["split", "label", "path", "sha256", "batch_id", "source_path", "width", "height"]


def empty_index() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in INDEX_COLUMNS})


def load_index(dataset_dir: Path) -> pd.DataFrame:
    """The dataset's index (empty if there is no dataset yet)."""
    path = dataset_dir / INDEX_FILE
    if not path.is_file():
        return empty_index()
    return pd.read_csv(
        path, dtype={"label": "string", "sha256": "string", "path": "string"}, keep_default_na=False
    )


def reference_of(index: pd.DataFrame, holdout_phash: list[str] | None = None) -> Reference:
    """The classes, counts and hashes a new batch is validated against (``holdout_phash``:
    the holdout rows' pHashes, from :func:`pipelines.data.neardup.dataset_phashes`)."""
    train = index[index["split"] == "train"]
    holdout = index[index["split"] == "holdout"]
    counts = train["label"].value_counts()
    return Reference(
        train_classes=frozenset(train["label"]),
        holdout_classes=frozenset(holdout["label"]),
        train_sha256=frozenset(train["sha256"]),
        holdout_sha256=frozenset(holdout["sha256"]),
        train_counts=tuple((str(k), int(v)) for k, v in counts.items()),
        holdout_phash=tuple(holdout_phash or ()),
    )


def assign_splits(
    manifest: pd.DataFrame, index: pd.DataFrame, policy: SplitPolicy, near_distance: int = -1
) -> pd.Series:
    """The split of each manifest row: explicit, or a seeded share for classes without holdout.

    Classes that already have a holdout get only training images. For every other class,
    ``policy.holdout_share`` of its images (at least one, chosen by a seeded shuffle of the
    rows sorted by hash, so the choice does not depend on file order) go to the holdout.
    Near-duplicates (pHashes within ``near_distance`` bits; -1: off) move as one group, so
    a photo and its re-save never sit on both sides.
    """
    from pipelines.data.neardup import groups

    frozen = set(index.loc[index["split"] == "holdout", "label"])
    splits = manifest["split"].copy()
    for label, rows in manifest[manifest["split"].isna()].groupby("label", sort=True):
        splits[rows.index] = "train"
        if (
            label in frozen
            or (manifest.loc[manifest["label"] == label, "split"] == "holdout").any()
        ):
            continue
        rows = rows.sort_values("sha256")
        hashes = rows["phash"] if "phash" in rows else pd.Series(None, index=rows.index)
        group = pd.Series(range(len(rows)), index=rows.index)
        known = hashes.notna()
        if near_distance >= 0 and known.any():
            ids = groups(hashes[known].tolist(), near_distance)
            group[known] = [len(rows) + int(i) for i in ids]
        sizes = group.value_counts(sort=False)
        ordered = list(dict.fromkeys(group.tolist()))
        random.Random(f"{policy.seed}:{label}").shuffle(ordered)
        n_holdout = max(1, round(len(rows) * policy.holdout_share))
        chosen, held = [], 0
        for g in ordered:
            if held >= n_holdout:
                break
            chosen.append(g)
            held += int(sizes[g])
        splits[group.index[group.isin(chosen)]] = "holdout"
    return splits


def _record_skipped(dataset_dir: Path, building: Path, batch_id: str, skipped: list) -> None:
    """Carry ``skipped.csv`` over and add this batch's skipped files (written only once a
    batch has skipped any, so datasets without repairs keep their content hash)."""
    old = dataset_dir / SKIPPED_FILE
    rows = pd.read_csv(old, dtype=str, keep_default_na=False) if old.is_file() else None
    if skipped:
        new = pd.DataFrame(skipped, columns=["path", "rule", "detail"]).assign(batch_id=batch_id)
        rows = pd.concat([rows, new[SKIPPED_COLUMNS]]) if rows is not None else new[SKIPPED_COLUMNS]
    if rows is not None:
        rows.to_csv(building / SKIPPED_FILE, index=False)


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(src, dest)


def _work_dirs(dataset_dir: Path, kind: str) -> list[Path]:
    return sorted(dataset_dir.parent.glob(f".{dataset_dir.name}.{kind}-*"))


def recover_dataset(
    dataset_dir: Path, versioned: Callable[[str], bool] = lambda batch_id: False
) -> list[str]:
    """Finish or undo what an interrupted merge left behind; return what was done.

    A merge whose batch ``versioned`` says is the recorded current version is kept (the crash
    came between versioning and dropping the old state); any other is undone."""
    done = []
    for partial in _work_dirs(dataset_dir, "merge"):
        shutil.rmtree(partial)
        done.append(f"removed unfinished merge {partial.name}")
    for previous in _work_dirs(dataset_dir, "previous"):
        batch_id = previous.name.split(".previous-", 1)[1]
        if dataset_dir.exists() and versioned(batch_id):
            shutil.rmtree(previous)
            done.append(f"kept the versioned merge of {batch_id}")
            continue
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        previous.rename(dataset_dir)
        done.append(f"restored the dataset from before {previous.name}")
    return done


class DiskFull(OSError):
    """The dataset's filesystem filled up during a merge (nothing was changed)."""


@dataclass(frozen=True)
class PendingMerge:
    """A merged dataset now in place, with the previous state kept until commit/rollback."""

    dataset_dir: Path
    previous: Path | None
    added: pd.DataFrame  # index rows of the new images

    def commit(self) -> None:
        """Keep the merge: drop the previous state."""
        if self.previous is not None and self.previous.exists():
            shutil.rmtree(self.previous)

    def rollback(self) -> None:
        """Undo the merge: put the previous state back."""
        shutil.rmtree(self.dataset_dir, ignore_errors=True)
        if self.previous is not None and self.previous.exists():
            self.previous.rename(self.dataset_dir)


def merge_batch(
    dataset_dir: Path,
    batch: StagedBatch,
    manifest: pd.DataFrame,
    report: ValidationReport,
    policy: SplitPolicy,
    near_distance: int = -1,
) -> PendingMerge:
    """Merge a validated batch into the dataset, atomically. Files the report skipped are
    left out and recorded in ``skipped.csv`` with the rule and why.

    Args:
        dataset_dir: the dataset directory (created by the first batch).
        batch: the staged batch whose files are merged.
        manifest: its manifest.
        report: its validation report; a failed report is refused.
        policy: how new classes' holdout is drawn.
        near_distance: near-duplicates (pHash bits) kept on one side of the split.

    Returns:
        The pending merge; call ``commit()`` once the new state is versioned, ``rollback()``
        if versioning fails.
    """
    if not report.passed:
        raise ValueError(f"batch {batch.batch_id} failed validation; it cannot be merged")
    recover_dataset(dataset_dir)
    index = load_index(dataset_dir)
    left_out = {row["path"] for row in report.skipped}
    manifest = manifest[~manifest["path"].isin(left_out)].reset_index(drop=True)
    splits = assign_splits(manifest, index, policy, near_distance)
    added = _index_rows(manifest, splits, batch.batch_id)
    building = dataset_dir.parent / f".{dataset_dir.name}.merge-{batch.batch_id}"
    building.mkdir(parents=True)
    try:
        for rel in index["path"]:
            _link_or_copy(dataset_dir / rel, building / rel)
        for rel, src in zip(added["path"], manifest["path"], strict=True):
            _link_or_copy(batch.files_dir / src, building / rel)
        merged = pd.concat([index, added], ignore_index=True)
        merged.sort_values(["split", "label", "path"]).to_csv(building / INDEX_FILE, index=False)
        _record_skipped(dataset_dir, building, batch.batch_id, report.skipped)
    except BaseException as exc:
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"no space left under {dataset_dir.parent} to merge batch {batch.batch_id} "
                f"({exc.strerror}); the dataset is unchanged: free space and submit it again"
            ) from exc
        raise
    return PendingMerge(dataset_dir, _swap_in(dataset_dir, building, batch.batch_id), added)


def _index_rows(manifest: pd.DataFrame, splits: list[str], batch_id: str) -> pd.DataFrame:
    """The dataset index rows of a batch's kept images: each stored as
    ``<split>/<label>/<sha256[:16]><suffix>``, its source path kept."""
    stored = [
        str(PurePosixPath(s, label, sha[:16] + PurePosixPath(p).suffix.lower()))
        for s, label, sha, p in zip(
            splits, manifest["label"], manifest["sha256"], manifest["path"], strict=True
        )
    ]
    return pd.DataFrame(
        {
            "split": splits,
            "label": manifest["label"],
            "path": stored,
            "sha256": manifest["sha256"],
            "batch_id": batch_id,
            "source_path": manifest["path"],
            "width": manifest["width"],
            "height": manifest["height"],
        }
    )


def _swap_in(dataset_dir: Path, building: Path, batch_id: str) -> Path | None:
    """Put a built state in place by renames; the old one is kept beside it (returned)."""
    previous = None
    if dataset_dir.exists():
        previous = dataset_dir.parent / f".{dataset_dir.name}.previous-{batch_id}"
        dataset_dir.rename(previous)
    building.rename(dataset_dir)
    return previous


def remove_class(dataset_dir: Path, label: str, change_id: str) -> PendingMerge:
    """The dataset without one class (its training and holdout images), swapped in
    atomically like a merge; ``added`` holds the rows removed. Earlier versions keep them.

    Raises:
        ValueError: the dataset has no such class.
    """
    recover_dataset(dataset_dir)
    index = load_index(dataset_dir)
    gone = index[index["label"] == label]
    if gone.empty:
        known = ", ".join(sorted(set(index["label"]))) or "none"
        raise ValueError(f"the dataset has no class {label!r} (classes: {known})")
    kept = index[index["label"] != label]
    building = dataset_dir.parent / f".{dataset_dir.name}.merge-{change_id}"
    building.mkdir(parents=True)
    try:
        for rel in kept["path"]:
            _link_or_copy(dataset_dir / rel, building / rel)
        kept.to_csv(building / INDEX_FILE, index=False)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return PendingMerge(dataset_dir, _swap_in(dataset_dir, building, change_id), gone)


def quarantine(
    batch_id: str,
    report: ValidationReport,
    quarantine_root: Path,
    staged: StagedBatch | None = None,
    upload: Path | None = None,
) -> Path:
    """Move a failed batch (or a copy of a refused upload) to ``quarantine/<batch-id>/``.

    The report goes beside it as report.json/.html/.txt. The user's own folder or file is
    never moved: only Refit's staging copy is, and a refused upload file is copied.
    """
    target = quarantine_root / batch_id
    for n in range(2, 10_000):  # the same content refused again: keep both
        if not target.exists():
            break
        target = quarantine_root / f"{batch_id}-{n}"
    target.mkdir(parents=True)
    if staged is not None and staged.root.exists():
        staged.files_dir.rename(target / "files")
        shutil.rmtree(staged.root)
    elif upload is not None and upload.is_file():
        (target / "upload").mkdir(exist_ok=True)
        shutil.copyfile(upload, target / "upload" / upload.name)
    report.write(target)
    return target


def class_counts(index: pd.DataFrame) -> dict[str, dict[str, int]]:
    """split -> class -> number of images."""
    return {
        split: {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()}
        for split, rows in index.groupby("split")
    }


def evaluation_holdout(index: pd.DataFrame) -> pd.DataFrame:
    """Holdout rows of the classes the dataset trains on: what every candidate is judged on.

    A class with holdout images but no training images yet (``truck`` in the embedded seed)
    is not judged until a batch brings its training data.
    """
    trained = set(index.loc[index["split"] == "train", "label"])
    return index[(index["split"] == "holdout") & index["label"].isin(trained)]


@dataclass(frozen=True)
class Dataset:
    """One dataset version as the steps read it: its directory, its index (read once) and
    its DVC version."""

    dir: Path
    index: pd.DataFrame
    version: str | None = None

    @classmethod
    def open(cls, dataset_dir: Path, version: str | None = None) -> Dataset:
        return cls(dataset_dir, load_index(dataset_dir), version)

    @property
    def empty(self) -> bool:
        return self.index.empty

    def rows(
        self, split: str, classes: list[str] | None = None, exclude: set[str] = frozenset()
    ) -> pd.DataFrame:
        """Index rows of one split, optionally of ``classes`` only, minus ``exclude``."""
        rows = self.index[(self.index["split"] == split) & ~self.index["label"].isin(exclude)]
        return rows if classes is None else rows[rows["label"].isin(classes)]

    def images(
        self, rows: pd.DataFrame, size: tuple[int, int], class_names: list[str] | None = None
    ) -> ImageSet:
        """Decode index rows at ``size``; labels index ``class_names`` (default: natural order,
        ``2`` before ``10``)."""
        return images_from_rows(self.dir, rows, size, class_names)

    def holdout_images(
        self, size: tuple[int, int], class_names: list[str] | None = None
    ) -> ImageSet:
        """The images every candidate is judged on (:func:`evaluation_holdout`), decoded."""
        return self.images(evaluation_holdout(self.index), size, class_names)
