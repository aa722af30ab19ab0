"""The deployments, on a Prefect work pool: `refit deploy` (and `refit up`) registers them,
and workers on any host (`refit worker`) run them.

- ``retrain``: runs when the event ``refit.batch.submitted`` arrives (the Retrain page,
  ``refit data submit``, or a file in the drop folder), for that submission; and on a cron
  from settings (default weekly, in ``orchestration.schedule_timezone``), taking every
  pending submission. Its concurrency limit of one is the "one retrain at a time" of every
  worker (further runs wait as queued; a crashed run's slot is freed with its state).
- ``drift``: the live drift check (``flows.drift``) on ``loop.drift_cron`` (hourly).
- ``bootstrap`` and ``rollback``: manual runs from the Prefect UI or the CLI.

What the server holds besides: the process work pool, the dataset lock (:mod:`flows.locks`),
and an automation that marks a running flow crashed when its heartbeats stop (its host
died), so its submission is announced again (``flows.watcher``) and another worker takes it.
The code runs from this checkout's path on every worker (the same path in the image).

Run with ``python -m flows.deployments`` (``refit up`` and ``refit deploy`` do).
"""

from __future__ import annotations

import contextlib

from prefect.events import DeploymentEventTrigger, emit_event
from prefect.schedules import Cron

from core.settings import PROJECT_ROOT, Settings

SUBMITTED = "refit.batch.submitted"
ZOMBIES = "refit: crash flow runs whose heartbeats stopped"
DRIFT_RETRAIN = "refit: retrain when the live log drifts"
ENTRYPOINTS = {
    "retrain": "flows/retrain.py:retrain",
    "drift": "flows/drift.py:drift",
    "bootstrap": "flows/bootstrap.py:bootstrap_flow",
    "rollback": "flows/rollback.py:rollback",
}


def announce(submission_id: str) -> None:
    """Emit the event that starts a retrain run for one submission."""
    emit_event(
        SUBMITTED,
        resource={"prefect.resource.id": f"refit.submission.{submission_id}"},
        payload={"submission": submission_id},
    )


def specs(settings: Settings) -> list[tuple[str, str, dict]]:
    """(flow, deployment name, options) of every deployment."""
    config = settings.orchestration
    return [
        (
            "retrain",
            "retrain",
            {
                "description": "Retrain on a submitted batch (its event), or on every pending "
                "one (the schedule). One run at a time.",
                "triggers": [
                    DeploymentEventTrigger(
                        expect={SUBMITTED},
                        match={"prefect.resource.id": "refit.submission.*"},
                        parameters={"submission": "{{ event.payload.submission }}"},
                    )
                ],
                "schedule": Cron(config.schedule_cron, timezone=config.schedule_timezone),
                "concurrency_limit": 1,
            },
        ),
        (
            "drift",
            "drift",
            {
                "description": "Check the live prediction log for drift from the champion's "
                "training images.",
                "schedule": Cron(settings.loop.drift_cron, timezone=config.schedule_timezone),
                "concurrency_limit": 1,
            },
        ),
        ("bootstrap", "bootstrap", {"description": "Make the first champion."}),
        ("rollback", "rollback", {"description": "Move the champion back."}),
    ]


def ensure_pool(settings: Settings) -> bool:
    """The process work pool (made if missing). Returns whether it was made."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(settings.orchestration.work_pool)
            return False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=settings.orchestration.work_pool, type="process")
            )
            return True


def ensure_zombie_automation(settings: Settings) -> None:
    """Running flows that miss their heartbeats for ``crashed_after_s`` become Crashed."""
    from prefect.automations import ChangeFlowRunState
    from prefect.client.schemas.objects import StateType
    from prefect.events.schemas.automations import EventTrigger, Posture

    trigger = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        after={"prefect.flow-run.heartbeat"},
        expect={
            "prefect.flow-run.heartbeat",
            "prefect.flow-run.Completed",
            "prefect.flow-run.Failed",
            "prefect.flow-run.Cancelled",
            "prefect.flow-run.Crashed",
        },
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=settings.orchestration.crashed_after_s,
    )
    action = ChangeFlowRunState(
        state=StateType.CRASHED,
        message=f"no heartbeat for {settings.orchestration.crashed_after_s} s: its host or "
        "worker died",
    )
    _save_automation(ZOMBIES, trigger, [action])


def _save_automation(name: str, trigger, actions: list) -> None:
    from prefect.automations import Automation

    try:
        existing = Automation.read(name=name)
    except ValueError:
        existing = None
    if existing is not None:
        existing.trigger, existing.actions = trigger, actions
        existing.update()
    else:
        Automation(name=name, trigger=trigger, actions=actions).create()


def ensure_drift_automation(settings: Settings, retrain_id) -> bool:
    """With ``loop.on_drift = retrain``: a drifted live log starts a retrain (of every
    pending batch). Otherwise no such automation. Returns whether it exists."""
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    from flows.drift import DRIFTED

    if settings.loop.on_drift != "retrain":
        with contextlib.suppress(ValueError):
            Automation.read(name=DRIFT_RETRAIN).delete()
        return False
    trigger = EventTrigger(
        expect={DRIFTED},
        match={"prefect.resource.id": "refit.model.*"},
        posture=Posture.Reactive,
        threshold=1,
        within=0,
    )
    action = RunDeployment(source="selected", deployment_id=retrain_id, parameters={})
    _save_automation(DRIFT_RETRAIN, trigger, [action])
    return True


def deploy(settings: Settings) -> list[str]:
    """Register pool, locks, automations and deployments (idempotent). Returns their names."""
    from prefect import Flow

    from flows import locks

    ensure_pool(settings)
    locks.ensure_limits()
    ensure_zombie_automation(settings)
    names, ids = [], {}
    for flow_name, name, options in specs(settings):
        flow = Flow.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINTS[flow_name])
        ids[flow_name] = flow.deploy(
            name,
            work_pool_name=settings.orchestration.work_pool,
            build=False,
            push=False,
            print_next_steps=False,
            **options,
        )
        names.append(f"{flow.name}/{name}")
    ensure_drift_automation(settings, ids["retrain"])
    return names


def main() -> None:
    from core.settings import get_settings

    for name in deploy(get_settings()):
        print(f"deployed {name}", flush=True)


if __name__ == "__main__":
    main()
