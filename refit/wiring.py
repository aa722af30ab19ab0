"""The pipelines objects the settings describe: the dataset store, the intake folders and
the model registry. Shared by the CLI and the Prefect flows, so both act on the same state.
Heavy modules are imported inside the functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.intake import IntakePaths
    from pipelines.registry import Registry
    from pipelines.versions import DvcStore
    from refit.settings import Settings


def intake(settings: Settings) -> tuple[DvcStore, IntakePaths]:
    """The DVC-versioned dataset and the intake folders (staging, quarantine, accepted)."""
    from pipelines.intake import IntakePaths
    from pipelines.versions import DvcStore

    settings.ensure_workspace()
    store = DvcStore(
        repo=settings.dvc_repo,
        dataset_dir=settings.dataset_dir,
        remote=str(settings.dvc_remote),
        cache_dir=settings.dvc_cache_dir,
        versions_dir=settings.dataset_versions_dir,
    )
    paths = IntakePaths(
        staging=settings.staging_dir,
        quarantine=settings.quarantine_dir,
        accepted=settings.accepted_dir,
        lock=settings.workspace / "intake.lock",
    )
    return store, paths


def registry(settings: Settings) -> Registry:
    """The MLflow model registry (artifacts go to our artifact root when the tracking URI is
    a database rather than a server)."""
    from pipelines.registry import Registry, RegistryConfig

    uri = str(settings.mlflow_tracking_uri)
    direct = not uri.startswith("http")
    return Registry(
        RegistryConfig(
            tracking_uri=uri,
            registry_uri=str(settings.mlflow_registry_uri),
            model_name=settings.registered_model_name,
            artifact_location=str(settings.mlflow_artifact_root) if direct else None,
        )
    )
