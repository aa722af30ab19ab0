"""Flow runs seen from outside Prefect: start a deployment, find the run that took a
submission (each retrain run tags itself ``took:<id>``), and read a run's steps, state and
report. Used by the CLI and the Retrain page (both talk to the Prefect API; neither imports
the flows)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class RunView:
    id: str
    name: str
    deployment: str
    state: str  # Prefect state type, e.g. RUNNING, COMPLETED, FAILED
    state_name: str
    message: str
    steps: list[dict] = field(default_factory=list)  # name, state, started, seconds
    report: str | None = None  # the markdown report artifact, once written
    progress: float | None = None  # fine-tuning progress, 0-100
    submissions: list[str] = field(default_factory=list)  # the submissions it took

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_dict(self) -> dict:
        return {**self.__dict__, "final": self.final}


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def start(deployment: str, parameters: dict | None = None) -> str:
    """Create a run of ``flow/deployment``; returns its id (the runner picks it up)."""
    with _client() as client:
        found = client.read_deployment_by_name(deployment)
        run = client.create_flow_run_from_deployment(found.id, parameters=parameters or {})
        return str(run.id)


TOOK = "took:"  # the tag a retrain run gives itself for each submission it takes


def mark_taken(run_id: str, submission_id: str) -> None:
    """Tag a run with a submission it takes (what :func:`find_submission_run` follows)."""
    from uuid import UUID

    with _client() as client:
        run = client.read_flow_run(UUID(run_id))
        client.update_flow_run(run.id, tags=[*run.tags, f"{TOOK}{submission_id}"])


def _retrain_runs(limit: int, tags: list[str] | None = None, by_start: bool = False) -> list:
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with _client() as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=tags)) if tags else None,
            sort=FlowRunSort.START_TIME_DESC if by_start else FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )


def _took(run) -> list[str]:
    """The submissions a run took (its ``took:`` tags)."""
    return [t.removeprefix(TOOK) for t in run.tags if t.startswith(TOOK)]


def find_submission_run(submission_id: str) -> str | None:
    """The retrain run that took this submission last (None while it waits its turn: runs
    take submissions oldest first, whichever one announced them). Ordered by when runs
    started: a run queued early can take it after a newer one was killed with it."""
    found = _retrain_runs(1, [f"{TOOK}{submission_id}"], by_start=True)
    return str(found[0].id) if found else None


def in_hand(submission_id: str, limit: int = 50) -> bool:
    """Whether an unfinished retrain run has this submission, or has not taken any yet (it
    will take the oldest pending one). Runs scheduled for later (the cron's) do not count."""
    soon = datetime.now(UTC) + timedelta(minutes=1)
    for run in _retrain_runs(limit):
        if run.expected_start_time is not None and run.expected_start_time > soon:
            continue
        if run.state is None or run.state.type.value not in FINAL:
            took = _took(run)
            if not took or submission_id in took:
                return True
    return False


def recent(limit: int = 10) -> list[RunView]:
    """The newest retrain runs, any state, newest first (no steps: ``view`` has them)."""
    return [
        RunView(
            id=str(r.id),
            name=r.name,
            deployment="",
            state=r.state.type.value if r.state else "SCHEDULED",
            state_name=r.state.name if r.state else "Scheduled",
            message=(r.state.message or "") if r.state else "",
            submissions=_took(r),
        )
        for r in _retrain_runs(limit)
    ]


def recent_failures(limit: int = 10) -> list[RunView]:
    """The newest retrain runs, among the last ``limit``, that crashed or failed."""
    found = _retrain_runs(limit)
    bad = [r for r in found if r.state and r.state.type.value in ("CRASHED", "FAILED")]
    return [
        RunView(
            id=str(r.id),
            name=r.name,
            deployment="",
            state=r.state.type.value,
            state_name=r.state.name,
            message=r.state.message or "",
            submissions=_took(r),
        )
        for r in bad
    ]


def view(run_id: str) -> RunView:
    """A run's state, steps (task runs), fine-tuning progress and report."""
    from uuid import UUID

    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with _client() as client:
        run = client.read_flow_run(UUID(run_id))
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        deployment = client.read_deployment(run.deployment_id).name if run.deployment_id else ""
    state = run.state
    steps = sorted(
        (
            {
                "name": t.name.rsplit("-", 1)[0],
                "state": t.state.name if t.state else "Pending",
                "started": t.start_time.isoformat() if t.start_time else None,
                "seconds": (t.end_time - t.start_time).total_seconds()
                if t.start_time and t.end_time
                else None,
            }
            for t in tasks
        ),
        key=lambda s: s["started"] or "",
    )
    reports = [a for a in artifacts if a.type == "markdown"]
    progress = [a for a in artifacts if a.type == "progress"]
    return RunView(
        id=str(run.id),
        name=run.name,
        deployment=deployment,
        state=state.type.value if state else "PENDING",
        state_name=state.name if state else "Pending",
        message=(state.message or "") if state else "",
        steps=steps,
        report="\n\n".join(str(a.data) for a in reports) or None,
        progress=float(progress[-1].data) if progress else None,
    )


def follow(
    run_id: str, on_change: Callable[[RunView], None], timeout_s: float = 3600, poll_s: float = 2
) -> RunView:
    """Poll a run until it is final, calling ``on_change`` whenever its steps or state move."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        current = view(run_id)
        key = (current.state_name, len(current.steps), [s["state"] for s in current.steps])
        if key != last:
            on_change(current)
            last = key
        if current.final:
            return current
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run_id} not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)
