"""The drift flow: check the live prediction log against the champion's training images
(``pipelines.loop.monitor``), hourly by default (``loop.drift_cron``). A drifted log emits the
event ``refit.drift.detected``; with ``loop.on_drift = retrain`` an automation then starts
a retrain that takes every pending batch. The same flow checks the champion's live accuracy
against the previous version (``pipelines.judge.live``) and rolls back when asked to."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from core import notify
from flows.common import log, settings

DRIFTED = "refit.drift.detected"


@task(name="check the live log", cache_policy=NO_CACHE)
def check_live_log():
    from pipelines import workspace
    from pipelines.loop import monitor

    config = settings()
    return monitor.check_live(
        workspace.registry(config),
        config.prediction_log_store(),
        config.loop.drift_images,
        config.validation.drift_alpha,
        config.loop.drift_permutations,
    )


@task(name="check live accuracy", cache_policy=NO_CACHE)
def check_live_accuracy():
    """The champion vs the previous version on labelled production images; tell people when
    it is worse, and roll back with loop.auto_rollback."""
    from pipelines import workspace
    from pipelines.judge import live

    config = settings()
    found = live.check(
        workspace.registry(config),
        config.prediction_log_store(),
        config.loop.rollback_min_labels,
        config.gate.alpha,
        config.loop.auto_rollback,
        config.notify,
    )
    log().info(found.message)
    return found


@flow(name="drift", log_prints=True)
def drift() -> dict:
    """Check the live prediction log for drift from the champion's training images, and the
    champion's live accuracy against the previous version."""
    config = settings()
    try:
        accuracy = check_live_accuracy()
    except Exception as exc:  # said in the report; the drift check still runs
        from pipelines.judge.live import LiveAccuracy

        accuracy = LiveAccuracy("failed", f"the live accuracy check failed: {exc}")
    check = check_live_log()
    log().info(check.message)
    run_url = f"{config.mlflow_url}/#/experiments/-/runs/{check.run_id}" if check.run_id else None
    link = f"\n\n[The check in MLflow]({run_url})" if run_url else ""
    create_markdown_artifact(
        f"## Drift of the live log: {check.status}\n\n{check.message}{link}\n\n"
        f"## Live accuracy: {accuracy.status}\n\n{accuracy.message}\n",
        key="drift-report",
        description=check.status,
    )
    if check.drifted:
        notify.send(
            config.notify,
            "drift-detected",
            f"drift in the live traffic of v{check.version}",
            check.message,
            run_url,
        )
        emit_event(
            DRIFTED,
            resource={"prefect.resource.id": f"refit.model.{config.registered_model_name}"},
            payload={"version": check.version, **check.result.metrics()},
        )
    return {
        "status": check.status,
        "drifted": check.drifted,
        "message": check.message,
        "live_accuracy": accuracy.message,
        "rolled_back": accuracy.rolled_back,
    }
