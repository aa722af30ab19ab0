"""The dataset lock every host respects: a Prefect global concurrency limit on the server
(``refit-dataset``, made by ``refit deploy``), so one writer of the dataset at a time (a
retrain's merge, the bootstrap, ``refit data add``) on any host. ("One retrain at a time" is
the retrain deployment's own concurrency limit.)

A slot is leased: a holder killed with its host frees it after
``orchestration.lock_lease_s``. Each host also guards its own copy of the dataset with a
file lock (``pipelines.data.intake``). The flows and the CLI take it and hand it to the
use case (``pipelines.workspace``), which never imports Prefect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from core.settings import Settings

DATASET = "refit-dataset"
LIMITS = {DATASET: "one writer of the dataset at a time"}


class LockError(RuntimeError):
    """A lock's limit is missing on the Prefect server, or the server cannot be reached."""


@contextlib.contextmanager
def _held(settings: Settings, name: str) -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    try:
        with concurrency(
            name, occupy=1, lease_duration=settings.orchestration.lock_lease_s, strict=True
        ):
            yield
    except Exception as exc:
        raise _readable(settings, name, exc) from exc


def _readable(settings: Settings, name: str, exc: Exception) -> Exception:
    """A failure to take the lock as one message naming the setting to check; anything that
    is not about the lock (an error of the work done while holding it) passes unchanged."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    text = str(exc)
    where = f"the Prefect server at {settings.prefect_api_url} (REFIT_PREFECT_API_URL)"
    if "not found" in text.lower():
        return LockError(f"{where} has no concurrency limit {name!r}: run `refit deploy` ({exc})")
    if not isinstance(exc, ConcurrencySlotAcquisitionError):
        return exc
    if "401" in text or "403" in text:
        return LockError(
            f"could not take the dataset lock: {where} refused the credential "
            "(REFIT_PREFECT_AUTH, or the workspace's prefect-auth file). Is it another "
            "workspace's server? Point REFIT_PREFECT_API_URL at this workspace's server, or "
            "stop the other one."
        )
    return LockError(f"could not take the dataset lock {name!r} on {where}: {text}")


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.HTTPError:
        return False


def dataset_writer(settings: Settings):
    """The dataset lock. With a local Prefect server that is not running, no flow can be
    writing (flows need it), so this host's file lock alone is enough."""
    if settings.local_prefect and not _answers(f"{settings.prefect_api_url}/health"):
        return contextlib.nullcontext()
    return _held(settings, DATASET)


def ensure_limits() -> list[str]:
    """Create the limits that are missing (idempotent); returns the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    made = []
    with get_client(sync_client=True) as client:
        for name in LIMITS:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
                made.append(name)
    return made
