"""Intake: take one uploaded batch from upload to dataset version, or to quarantine.

The steps (each a function of its own module, so flows can run them as separate tasks):
stage and manifest (``ingest``) -> validate (``validate``) -> on failure quarantine, on
success merge atomically (``dataset``) and version with DVC (``versions``). If versioning
fails the merge is rolled back, so the dataset never holds an unversioned state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import psutil

from core.faults import failpoint
from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
from core.progress import Progress
from pipelines.data.dataset import (
    PendingMerge,
    class_counts,
    load_index,
    merge_batch,
    quarantine,
    recover_dataset,
    reference_of,
)
from pipelines.data.dataset import remove_class as remove_class_from
from pipelines.data.examine import ChampionView, examine
from pipelines.data.ingest import (
    STAGING_OWNER,
    BatchRefused,
    StagedBatch,
    build_manifest,
    new_batch_id,
    stage_batch,
)
from pipelines.data.neardup import dataset_phashes
from pipelines.data.validate import RuleResult, ValidationReport, validate_batch
from pipelines.data.versions import DatasetVersion, DvcStore


@dataclass(frozen=True)
class IntakePaths:
    """Where batches live while they are checked, and after."""

    staging: Path  # batches being checked
    quarantine: Path  # failed batches with their reports
    accepted: Path  # reports and manifests of merged batches
    lock: Path  # one intake at a time


@dataclass(frozen=True)
class Intake:
    """How batches come in: the intake folders, the unpacking limits and the policies (what
    :func:`check_batch` and :func:`add_batch` share)."""

    paths: IntakePaths
    limits: IngestLimits
    validation: ValidationPolicy
    split: SplitPolicy = field(default_factory=SplitPolicy)


@dataclass(frozen=True)
class CheckedBatch:
    """A batch after validation: staged files (unless refused), manifest and report."""

    batch_id: str
    staged: StagedBatch | None
    manifest: pd.DataFrame | None
    report: ValidationReport


@dataclass(frozen=True)
class IntakeResult:
    report: ValidationReport
    version: DatasetVersion | None = None  # set when the batch was merged
    quarantined: Path | None = None  # set when it failed
    added: dict[str, dict[str, int]] | None = None  # split -> class -> images added


@contextmanager
def intake_lock(path: Path) -> Iterator[None]:
    """Serialise intakes: the dataset has one writer at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


STALE_STAGING_S = 3600.0
PHASH_CACHE = "phash-cache.csv"  # the dataset images' pHashes by sha256, beside staging


def _abandoned(entry: Path, now: float, older_than_s: float) -> bool:
    """Whether a staging entry's intake is gone: its owner process (on this host) is dead,
    or, with no owner recorded, nothing touched it for ``older_than_s``."""
    owner = entry / STAGING_OWNER
    if owner.is_file():
        host, _, pid = owner.read_text().rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return not psutil.pid_exists(int(pid))
    return now - entry.stat().st_mtime >= older_than_s


def sweep_staging(staging: Path, older_than_s: float = STALE_STAGING_S) -> list[str]:
    """Remove what killed intakes left in staging (their process is gone; an entry of
    unknown owner once untouched for ``older_than_s``: a check still running elsewhere is
    never that old)."""
    if not staging.is_dir():
        return []
    now, done = time.time(), []
    for entry in staging.iterdir():
        if _abandoned(entry, now, older_than_s):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
            done.append(f"swept {entry.name} from staging")
    return done


def content_batch_id(manifest: pd.DataFrame) -> str:
    """A batch's id, from its content: the same images with the same labels and splits get
    the same id, so the same batches always build the same dataset version."""
    rows = sorted(
        zip(manifest["label"], manifest["split"].fillna(""), manifest["sha256"], strict=True)
    )
    return "batch-" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def check_batch(
    source: Path,
    dataset_dir: Path,
    intake: Intake,
    progress: Progress = print,
    view: ChampionView | None = None,
) -> CheckedBatch:
    """Stage, describe and validate a batch against the dataset in ``dataset_dir``, and
    (with a champion ``view``) examine it through the champion's eyes. Changes nothing.

    The staged copy stays in ``intake.paths.staging`` for the caller to merge, quarantine
    or discard (:func:`discard`).
    """
    paths, limits, policy = intake.paths, intake.limits, intake.validation
    batch_id = new_batch_id()
    progress(f"Unpacking {source}")
    try:
        staged = stage_batch(source, paths.staging, limits, batch_id)
    except BatchRefused as exc:
        return CheckedBatch(batch_id, None, None, ValidationReport.refused(batch_id, source, exc))
    progress(f"Inspecting {len(staged.files)} images")
    manifest = build_manifest(
        staged, limits, lambda done, total: progress(f"Inspected {done}/{total} images")
    )
    batch_id = content_batch_id(manifest)
    staged = replace(staged, batch_id=batch_id)
    progress(f"Validating {batch_id}")
    index = load_index(dataset_dir)
    holdout = index[index["split"] == "holdout"]
    phashes = dataset_phashes(dataset_dir, holdout, paths.staging.parent / PHASH_CACHE)
    report = validate_batch(staged, manifest, reference_of(index, phashes), policy)
    if view is not None and report.passed:
        report = examine(view, staged.files_dir, manifest, report, policy, progress)
    return CheckedBatch(batch_id, staged, manifest, report)


def discard(checked: CheckedBatch) -> None:
    """Drop the staged copy of a batch that was only checked."""
    if checked.staged is not None:
        shutil.rmtree(checked.staged.root, ignore_errors=True)


def recover(store: DvcStore, paths: IntakePaths, progress: Progress = print) -> None:
    """Finish or undo what killed intakes left (a merge not yet versioned or not yet
    committed, a ``data.dvc`` ahead of the version log, staged copies)."""
    with intake_lock(paths.lock):
        _recover(store, paths, progress)


def _versioned(store: DvcStore, batch_id: str) -> bool:
    record = store.current_record()
    return record is not None and record.batch_id == batch_id


def _recover(store: DvcStore, paths: IntakePaths, progress: Progress) -> None:
    if store.restore_pointer():
        progress("Recovered: data.dvc pointed at an unrecorded version; reset it")
    done = recover_dataset(store.dataset_dir, lambda batch_id: _versioned(store, batch_id))
    for note in done + sweep_staging(paths.staging):
        progress(f"Recovered: {note}")
    _sync(store, progress)


def _sync(store: DvcStore, progress: Progress) -> None:
    if (synced := store.sync()) is not None:
        progress(f"Checked out dataset version {synced.version[:12]} (recorded by another host)")


def sync(store: DvcStore, paths: IntakePaths, progress: Progress = print) -> None:
    """This host's copy of the dataset at the newest recorded version."""
    with intake_lock(paths.lock):
        _sync(store, progress)


def add_batch(
    source: Path,
    store: DvcStore,
    intake: Intake,
    progress: Progress = print,
    view: ChampionView | None = None,
) -> IntakeResult:
    """Validate a batch (examined by the champion ``view``, if given) and either quarantine
    it or merge it into the dataset ``store`` versions, and version it.

    Returns:
        The result: the report, and the new dataset version or the quarantine folder.
    """
    paths = intake.paths
    with intake_lock(paths.lock):
        _recover(store, paths, progress)
        checked = check_batch(source, store.dataset_dir, intake, progress, view)
        if _versioned(store, checked.batch_id):  # merged by a run killed before it said so
            return _already_merged(checked, store, paths.accepted, progress)
        if not checked.report.passed:
            target = quarantine(
                checked.batch_id,
                checked.report,
                paths.quarantine,
                staged=checked.staged,
                upload=Path(source),
            )
            return IntakeResult(checked.report, quarantined=target)
        try:
            version, pending = _merge_and_version(
                checked, store, intake.split, intake.validation.near_duplicate_distance, progress
            )
        except BaseException:
            discard(checked)  # the submission keeps the upload: nothing is lost
            raise
        _archive_accepted(checked, paths.accepted)
        return IntakeResult(checked.report, version=version, added=class_counts(pending.added))


def remove_class(
    store: DvcStore, paths: IntakePaths, label: str, reason: str, progress: Progress = print
) -> DatasetVersion:
    """A new dataset version without class ``label``, recorded with ``reason`` (a class that
    should not have been merged). Versioned like a merge: all or nothing.

    Raises:
        ValueError: the dataset has no such class.
    """
    if not reason.strip():
        raise ValueError("say why the class is removed (it is recorded with the version)")
    with intake_lock(paths.lock):
        _recover(store, paths, progress)
        change_id = f"remove-{label}-{time.strftime('%Y%m%dT%H%M%S')}"
        pending = remove_class_from(store.dataset_dir, label, change_id)
        try:
            progress("Versioning with DVC (add + push)")
            counts = class_counts(load_index(store.dataset_dir))
            version = store.add_version(change_id, counts, note=f"removed {label}: {reason}")
        except BaseException:
            pending.rollback()
            store.restore_pointer()
            raise
        pending.commit()
        return version


def _merge_and_version(
    checked: CheckedBatch,
    store: DvcStore,
    split: SplitPolicy,
    near_distance: int,
    progress: Progress,
) -> tuple[DatasetVersion, PendingMerge]:
    """Merge atomically, then version; the old state comes back if versioning fails."""
    assert checked.staged is not None and checked.manifest is not None
    progress("Merging into the dataset")
    store.ensure_initialized()
    pending = merge_batch(
        store.dataset_dir, checked.staged, checked.manifest, checked.report, split, near_distance
    )
    try:
        failpoint("merge.swapped")
        progress("Versioning with DVC (add + push)")
        counts = class_counts(load_index(store.dataset_dir))
        version = store.add_version(checked.batch_id, counts)
    except BaseException:
        pending.rollback()
        store.restore_pointer()  # `dvc add` may have moved data.dvc before push failed
        raise
    failpoint("merge.versioned")
    pending.commit()
    return version, pending


def _already_merged(
    checked: CheckedBatch, store: DvcStore, accepted_root: Path, progress: Progress
) -> IntakeResult:
    """The result for a batch that is already the current dataset version: nothing merged."""
    version = store.current_record()
    assert version is not None
    index = load_index(store.dataset_dir)
    progress(f"{checked.batch_id} is already merged as dataset version {version.version[:12]}")
    rule = RuleResult(
        "already_merged",
        f"The batch is dataset version {version.version[:12]} already (merged by an earlier "
        "run that was interrupted before it finished); nothing was merged again.",
        True,
    )
    report = ValidationReport(
        checked.batch_id,
        checked.report.source,
        True,
        [rule],
        class_counts=checked.report.class_counts,
        new_classes=checked.report.new_classes,
        n_images=checked.report.n_images,
    )
    if not (accepted_root / checked.batch_id / "manifest.csv").is_file():
        _archive_accepted(replace(checked, report=report), accepted_root)
    discard(checked)
    added = class_counts(index[index["batch_id"] == checked.batch_id])
    return IntakeResult(report, version=version, added=added)


def _archive_accepted(checked: CheckedBatch, accepted_root: Path) -> None:
    """Keep the report and manifest of a merged batch; drop its staged files."""
    target = accepted_root / checked.batch_id
    checked.report.write(target)
    assert checked.manifest is not None and checked.staged is not None
    checked.manifest.to_csv(target / "manifest.csv", index=False)
    shutil.rmtree(checked.staged.root, ignore_errors=True)
