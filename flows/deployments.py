"""What `refit up` serves: the deployments, their triggers and schedule, and the drop folder.

- ``retrain``: runs when the event ``refit.batch.submitted`` arrives (the Retrain page,
  ``refit data submit``, or a file dropped into ``incoming/``), for that submission.
- ``scheduled-retrain``: the same flow on a cron from settings (default weekly, in
  ``orchestration.schedule_timezone``), taking every pending submission.
- ``bootstrap`` and ``rollback``: manual runs from the Prefect UI or the CLI.

At most one retrain runs at a time: each retrain deployment has a concurrency limit of one
(further runs wait in the UI as queued) and the flow holds a file lock while it works. A
submission whose run crashed is announced again (``orchestration.retry_after_s``); a
duplicate run finds nothing left to do.
Schedules stay active across restarts (``pause_on_shutdown=False``).

Run with ``python -m flows.deployments`` (``refit up`` does it in the background).
"""

from __future__ import annotations

import threading
import time

from prefect import serve
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.schedules import Cron

from flows.bootstrap import bootstrap_flow
from flows.common import settings
from flows.retrain import retrain
from flows.rollback import rollback

SUBMITTED = "refit.batch.submitted"


def announce(submission_id: str) -> None:
    """Emit the event that starts a retrain run for one submission."""
    emit_event(
        SUBMITTED,
        resource={"prefect.resource.id": f"refit.submission.{submission_id}"},
        payload={"submission": submission_id},
    )


def deployments() -> list:
    config = settings().orchestration
    return [
        retrain.to_deployment(
            "retrain",
            description="Retrain on one submitted batch (started by its submission event).",
            triggers=[
                DeploymentEventTrigger(
                    expect={SUBMITTED},
                    match={"prefect.resource.id": "refit.submission.*"},
                    parameters={"submission": "{{ event.payload.submission }}"},
                )
            ],
            concurrency_limit=1,
        ),
        retrain.to_deployment(
            "scheduled-retrain",
            description="Retrain on every pending batch, on a schedule.",
            schedule=Cron(config.schedule_cron, timezone=config.schedule_timezone),
            concurrency_limit=1,
        ),
        bootstrap_flow.to_deployment("bootstrap", description="Make the first champion."),
        rollback.to_deployment("rollback", description="Move the champion back."),
    ]


def watch_drop_folder() -> None:
    """Adopt files dropped into incoming/ and announce every pending submission; announce
    one again when no run has it in hand after ``orchestration.retry_after_s`` (its run
    crashed, or the event was lost), so nothing stays stranded until a restart."""
    from core import runs
    from pipelines import submissions

    config = settings()
    announced: dict[str, float] = {}
    while True:
        try:
            submissions.adopt_dropped(config.incoming_dir, config.orchestration.settle_s)
            for pending in submissions.pending(config.incoming_dir):
                last = announced.get(pending.id)
                due = last is None or time.monotonic() - last >= config.orchestration.retry_after_s
                if due and (last is None or not runs.in_hand(pending.id)):
                    announce(pending.id)
                    announced[pending.id] = time.monotonic()
        except Exception as exc:  # keep watching; the next poll retries
            print(f"drop folder watcher: {exc}", flush=True)
        time.sleep(config.orchestration.incoming_poll_s)


def main() -> None:
    threading.Thread(target=watch_drop_folder, name="drop-folder", daemon=True).start()
    serve(*deployments(), pause_on_shutdown=False)


if __name__ == "__main__":
    main()
