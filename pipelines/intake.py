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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
from pipelines.dataset import (
    class_counts,
    load_index,
    merge_batch,
    quarantine,
    recover_dataset,
    reference_of,
)
from pipelines.ingest import BatchRefused, StagedBatch, build_manifest, new_batch_id, stage_batch
from pipelines.validate import ValidationReport, validate_batch
from pipelines.versions import DatasetVersion, DvcStore

Progress = Callable[[str], None]


@dataclass(frozen=True)
class IntakePaths:
    """Where batches live while they are checked, and after."""

    staging: Path  # batches being checked
    quarantine: Path  # failed batches with their reports
    accepted: Path  # reports and manifests of merged batches
    lock: Path  # one intake at a time


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


def sweep_staging(staging: Path, older_than_s: float = STALE_STAGING_S) -> list[str]:
    """Remove what killed intakes left in staging (untouched for ``older_than_s``: a check
    still running elsewhere is never that old)."""
    if not staging.is_dir():
        return []
    now, done = time.time(), []
    for entry in staging.iterdir():
        if now - entry.stat().st_mtime >= older_than_s:
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
    paths: IntakePaths,
    limits: IngestLimits,
    policy: ValidationPolicy,
    progress: Progress = print,
) -> CheckedBatch:
    """Stage, describe and validate a batch against the current dataset. Changes nothing.

    The staged copy stays in ``paths.staging`` for the caller to merge, quarantine or
    discard (:func:`discard`).
    """
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
    reference = reference_of(load_index(dataset_dir))
    report = validate_batch(staged, manifest, reference, policy)
    return CheckedBatch(batch_id, staged, manifest, report)


def discard(checked: CheckedBatch) -> None:
    """Drop the staged copy of a batch that was only checked."""
    if checked.staged is not None:
        shutil.rmtree(checked.staged.root, ignore_errors=True)


def add_batch(
    source: Path,
    store: DvcStore,
    paths: IntakePaths,
    limits: IngestLimits,
    policy: ValidationPolicy,
    split: SplitPolicy,
    progress: Progress = print,
) -> IntakeResult:
    """Validate a batch and either quarantine it or merge and version it.

    Returns:
        The result: the report, and the new dataset version or the quarantine folder.
    """
    with intake_lock(paths.lock):
        for note in recover_dataset(store.dataset_dir) + sweep_staging(paths.staging):
            progress(f"Recovered: {note}")
        if store.restore_pointer():
            progress("Recovered: data.dvc pointed at an unrecorded version; reset it")
        checked = check_batch(source, store.dataset_dir, paths, limits, policy, progress)
        if not checked.report.passed:
            target = quarantine(
                checked.batch_id,
                checked.report,
                paths.quarantine,
                staged=checked.staged,
                upload=Path(source),
            )
            return IntakeResult(checked.report, quarantined=target)
        assert checked.staged is not None and checked.manifest is not None
        progress("Merging into the dataset")
        store.ensure_initialized()
        pending = merge_batch(
            store.dataset_dir, checked.staged, checked.manifest, checked.report, split
        )
        try:
            progress("Versioning with DVC (add + push)")
            counts = class_counts(load_index(store.dataset_dir))
            version = store.add_version(checked.batch_id, counts)
        except BaseException:
            pending.rollback()
            raise
        pending.commit()
        _archive_accepted(checked, paths.accepted)
        return IntakeResult(checked.report, version=version, added=class_counts(pending.added))


def _archive_accepted(checked: CheckedBatch, accepted_root: Path) -> None:
    """Keep the report and manifest of a merged batch; drop its staged files."""
    target = accepted_root / checked.batch_id
    checked.report.write(target)
    assert checked.manifest is not None and checked.staged is not None
    checked.manifest.to_csv(target / "manifest.csv", index=False)
    shutil.rmtree(checked.staged.root, ignore_errors=True)
