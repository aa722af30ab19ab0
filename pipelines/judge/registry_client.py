"""The registry's plumbing: one MLflow client for one registered model, every call retried
with backoff while the server is down, and the errors a registry action can end in."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from core.settings import Settings


T = TypeVar("T")


class RegistryError(RuntimeError):
    """A registry action is not possible; the message says why. Nothing moved."""


class RegistryUnavailable(RegistryError):
    """The MLflow server did not answer after the retries."""


class ChampionMoved(RegistryError):
    """The champion is no longer the one a promotion was judged against."""


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str
    registry_uri: str
    model_name: str
    artifact_location: str | None = None  # for clients that write to a database directly
    cache_dir: Path | None = None  # downloaded versions (see Registry.load)
    retries: int = 4
    backoff_s: float = 0.5

    @classmethod
    def of(cls, settings: Settings) -> RegistryConfig:
        """The registry ``settings`` point at (artifacts go to our artifact root when the
        tracking URI is a database rather than a server)."""
        uri = str(settings.mlflow_tracking_uri)
        direct = not uri.startswith("http")
        return cls(
            tracking_uri=uri,
            registry_uri=str(settings.mlflow_registry_uri),
            model_name=settings.registered_model_name,
            artifact_location=str(settings.mlflow_artifact_root) if direct else None,
            cache_dir=settings.workspace / "model-cache",
        )


def not_found(exc: Exception) -> bool:
    """Whether an MLflow error says the thing asked for does not exist."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _is_connection_error(exc: Exception) -> bool:
    """Whether an error means the server could not be reached (worth a retry)."""
    if isinstance(exc, ConnectionError):
        return True
    text = str(exc)
    return any(
        s in text
        for s in (
            "Connection refused",
            "Max retries exceeded",
            "Failed to establish",
            "API request to",
        )
    )


class RegistryClient:
    """One registered model in MLflow, and the calls to its server."""

    def __init__(self, config: RegistryConfig) -> None:
        from mlflow import MlflowClient

        # We retry with our own backoff; MLflow's own HTTP retries would add minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.config = config
        self.name = config.model_name
        self.client = MlflowClient(config.tracking_uri, config.registry_uri)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an MLflow call, retrying with exponential backoff while the server is down."""
        delay = self.config.backoff_s
        for attempt in range(1, self.config.retries + 1):
            try:
                return fn()
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                if attempt == self.config.retries:
                    raise RegistryUnavailable(
                        f"MLflow at {self.config.tracking_uri} did not answer to {what} after "
                        f"{attempt} tries; is it running (`refit up`)?"
                    ) from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def experiment_id(self, name: str | None = None) -> str:
        """The id of experiment ``name`` (default: the model's), made if missing."""
        name = name or self.name

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = self.config.artifact_location
            if location and name != self.name:  # beside the model's, not inside it
                location = f"{location.rstrip('/')}-{name}"
            return self.client.create_experiment(name, artifact_location=location)

        return self._call("find the experiment", get_or_create)

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        def ensure() -> None:
            try:
                self.client.get_registered_model(self.name)
            except MlflowException as exc:
                if not not_found(exc):
                    raise
                self.client.create_registered_model(
                    self.name, description="Image classifier kept up to date by Refit."
                )

        self._call("create the registered model", ensure)
