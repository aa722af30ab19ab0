"""The rollback flow: move the champion alias back (to `previous` or a given version),
record why, and have serving load it."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import reload_serving, settings, with_http_retries


@task(name="move the champion alias", cache_policy=NO_CACHE)
def move_alias(reason: str, to: str | None) -> str:
    from pipelines.workspace import registry

    return registry(settings()).rollback(reason, to)


@flow(name="rollback", log_prints=True)
def rollback(reason: str, to: str | None = None) -> str:
    """Make an earlier version the champion again.

    Args:
        reason: why (recorded in the registry's history).
        to: the version to return to (default: the one before the current champion).
    """
    version = move_alias(reason, to)
    with_http_retries(reload_serving)(version)
    return version
