"""The pipelines' objects the settings describe: the DVC-versioned dataset, the intake
folders and the model registry, and taking a batch in with them. Shared by the CLI, the
flows and the DVC stages, so all of them act on the same state. Heavy modules are imported
inside the functions."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from core.progress import Progress

if TYPE_CHECKING:
    from core.settings import Settings
    from pipelines.data.dataset import Dataset
    from pipelines.data.intake import Intake, IntakePaths
    from pipelines.data.versions import DvcStore
    from pipelines.judge.registry import Registry


# The caller's dataset lock when it takes none (a test, a workspace without servers): this
# host's file lock (pipelines.data.intake) still guards its own copy.
NO_LOCK = nullcontext()


def store(settings: Settings) -> DvcStore:
    """The DVC repository that versions the dataset."""
    from pipelines.data.versions import DvcStore

    settings.ensure_workspace()
    return DvcStore(
        repo=settings.dvc_repo,
        dataset_dir=settings.dataset_dir,
        remote=str(settings.dvc_remote),
        cache_dir=settings.dvc_cache_dir,
        log=settings.shared_store(),
        endpoint_url=settings.store_endpoint_url,
    )


def intake_paths(settings: Settings) -> IntakePaths:
    """Where batches are staged, quarantined and archived, and the intake lock."""
    from pipelines.data.intake import IntakePaths

    return IntakePaths(
        staging=settings.staging_dir,
        quarantine=settings.quarantine_dir,
        accepted=settings.accepted_dir,
        lock=settings.workspace / "intake.lock",
    )


def intake_of(settings: Settings) -> Intake:
    """How batches come in here: the folders, limits and policies the settings describe."""
    from pipelines.data.intake import Intake

    return Intake(intake_paths(settings), settings.ingest, settings.validation, settings.split)


def dataset(settings: Settings) -> Dataset:
    """The current dataset version: its index, read once, and its DVC version."""
    from pipelines.data import intake
    from pipelines.data.dataset import Dataset

    versions = store(settings)
    intake.sync(versions, intake_paths(settings), progress=lambda message: None)
    return Dataset.open(settings.dataset_dir, versions.current_version())


def registry(settings: Settings) -> Registry:
    """The MLflow model registry."""
    from pipelines.judge.registry import Registry
    from pipelines.judge.registry_client import RegistryConfig

    return Registry(RegistryConfig.of(settings))


def loop_embedding(settings: Settings, progress: Progress = print):
    """The ImageNet embedding when the loop works in it (``loop.queue_embedding``), built
    once per host and shared through the prediction log's store with serving hosts; None
    otherwise, or when its weights cannot be had (said, not raised: a version registers
    without it and the loop uses the champion's features)."""
    if settings.loop.queue_embedding != "imagenet":
        return None
    from core.objectstore import StoreError
    from pipelines.models.embedding import share_embedding
    from pipelines.models.imagenet import imagenet_embedding
    from pipelines.models.pretrained import WeightsUnavailable

    try:
        embed = imagenet_embedding(settings.weights_dir, progress=progress)
    except WeightsUnavailable as exc:
        progress(f"No ImageNet embedding for the label queue: {exc}")
        return None
    try:
        share_embedding(settings.prediction_log_store(), settings.weights_dir)
    except StoreError as exc:  # the next registration shares it; this one goes on
        progress(f"The ImageNet embedding is not shared with serving hosts yet: {exc}")
    return embed


def recover(settings: Settings, progress: Progress = print) -> None:
    """Finish or undo what killed intakes left behind (:func:`pipelines.data.intake.recover`)."""
    from pipelines.data import intake

    intake.recover(store(settings), intake_paths(settings), progress)


def remove_class(
    settings: Settings,
    label: str,
    reason: str,
    progress: Progress = print,
    lock: AbstractContextManager = NO_LOCK,
):
    """A recorded dataset version without ``label`` (:func:`pipelines.data.intake.remove_class`),
    holding ``lock``: the dataset lock every host respects, which the caller takes."""
    from pipelines.data import intake

    with lock:
        return intake.remove_class(store(settings), intake_paths(settings), label, reason, progress)


def champion_view(settings: Settings, progress: Progress = print):
    """The champion that examines batches (``pipelines.data.examine``); None before the first one,
    or when the registry cannot be reached (the data checks still run; it says so)."""
    from pipelines.data.examine import champion_view as view_of
    from pipelines.judge.registry_client import RegistryUnavailable

    try:
        return view_of(registry(settings))
    except RegistryUnavailable as exc:
        progress(f"Labels and drift not checked (no champion to ask): {exc}")
        return None


def check_batch(settings: Settings, source: Path, progress: Progress = print):
    """Validate a batch against the current dataset, examined by the champion, changing
    nothing (:func:`pipelines.data.intake.check_batch`); the staged copy is dropped."""
    from pipelines.data import intake

    view = champion_view(settings, progress)
    checked = intake.check_batch(source, settings.dataset_dir, intake_of(settings), progress, view)
    intake.discard(checked)
    return checked


ASK = object()  # add_batch's default view: the champion's, asked for then


def add_batch(
    settings: Settings,
    source: Path,
    progress: Progress = print,
    view=ASK,
    lock: AbstractContextManager = NO_LOCK,
):
    """Take a batch in with the configured limits and policies: validated (and examined by
    the champion ``view``, :func:`champion_view` unless given), then merged and versioned, or
    quarantined (:func:`pipelines.data.intake.add_batch`), holding ``lock``: the dataset lock
    every host respects, which the caller (a flow, the CLI) takes."""
    from pipelines.data import intake

    view = champion_view(settings, progress) if view is ASK else view
    with lock:
        return intake.add_batch(source, store(settings), intake_of(settings), progress, view)
