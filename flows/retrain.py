"""The retrain flow: every submitted batch goes ingest → validate → merge + DVC version →
fine-tune (growing the head for new classes) → judge champion vs challenger → register,
promote → serving reload → live smoke check → report.

Orchestration only: each task calls ``pipelines`` functions, and the submission's state
machine (``pipelines.data.submissions.advance``) says what happens next. A rejected batch is
quarantined and never reaches the dataset; a failed or killed run never moves the champion
alias (only ``judge and promote`` moves it, after the gate). Every run first finishes or
undoes what a killed run left (``workspace.recover``); a submission is then resumed where
its state says: a merged batch is fine-tuned (or, if its challenger was registered already,
promoted as the gate said), a judged one only goes live. Failpoints (``core.faults``) mark
the places the fault-matrix tests kill a run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from core import notify, runs
from core.faults import failpoint
from flows import locks
from flows.common import go_live, importing, log, reach_shared_servers, report_links, settings
from pipelines.data import submissions
from pipelines.data.submissions import Queue
from pipelines.judge import reports


@task(name="take submissions", cache_policy=NO_CACHE)
def take_submissions(submission: str | None) -> list:
    from pipelines import workspace

    config = settings()
    heavy = importing("pipelines.judge.registry", "mlflow")  # while this waits on the servers
    reach_shared_servers()
    workspace.recover(config, progress=log().info)  # what a killed run left
    heavy.join()
    done = workspace.registry(config).complete_pending()  # an alias move cut short
    if done:
        log().info("Recovered: %s", done)
    failpoint("take")
    queue = Queue.of(config).pending()  # oldest first
    if submission is not None:  # a run announced for one submission takes the oldest one
        if not queue:  # an earlier run (e.g. the scheduled one) took it already
            log().info("submission %s is no longer pending; nothing to do", submission)
        elif queue[0].id != submission:
            log().info("taking %s first: it waited longer than %s", queue[0].id, submission)
        queue = queue[:1]
    for sub in queue:
        runs.mark_taken(str(flow_run.id), sub.id)  # what the CLI and the pages follow
    return queue


@task(name="validate and merge", cache_policy=NO_CACHE)
def validate_and_merge(submission):
    """Ingest + GX validation; merge and version the dataset, or quarantine the batch."""
    from pipelines import workspace

    config = settings()
    queue = Queue.of(config)
    with ThreadPoolExecutor(1) as pool:  # the batch comes from the store as the champion loads
        batch = pool.submit(queue.batch, submission)
        view = workspace.champion_view(config, log().info)
        lock = locks.dataset_writer(config)
        result = workspace.add_batch(config, batch.result(), log().info, view=view, lock=lock)
    if result.version is not None:
        queue.mark_merged(submission, result.version.batch_id)
    return result


@task(name="fine-tune", cache_policy=NO_CACHE)
def finetune(batch_id: str, epochs: int | None):
    """Fine-tune the champion on the merged batch with replay; grow the head if needed.

    Returns the challenge: the champion (downloaded once, judged in the next step), the
    challenger, its fits and the dataset (its index read once)."""
    from pipelines import workspace
    from pipelines.judge import candidate

    config = settings()
    champion = candidate.current_champion(workspace.registry(config))
    if champion is None:
        raise RuntimeError("there is no champion to fine-tune; run the bootstrap flow first")
    finetune_config = config.finetune.model_copy(update={"epochs": epochs} if epochs else {})
    total = finetune_config.head_epochs + finetune_config.epochs
    progress_id = create_progress_artifact(0.0, description="fine-tuning epochs done")
    logger = log()
    done = 0

    def progress(message: str) -> None:
        nonlocal done
        logger.info(message)
        if " epoch " in message:
            done += 1
            update_progress_artifact(progress_id, min(100.0, 100.0 * done / total))

    dataset = workspace.dataset(config)
    trial = candidate.challenge(champion, dataset, batch_id, finetune_config, progress)
    update_progress_artifact(progress_id, 100.0)
    return trial


@task(name="judge and promote", cache_policy=NO_CACHE)
def judge_and_promote(submission, trial, gate_overrides: dict):
    """Evaluate champion and challenger on the same holdout; register; promote if blessed."""
    from core.contract import SUBMISSION_TAG
    from pipelines import workspace
    from pipelines.judge import candidate

    config = settings()
    policy = config.gate.model_copy(update=gate_overrides)
    registry = workspace.registry(config)
    tags = {SUBMISSION_TAG: submission.id}
    return candidate.judge_challenge(
        trial,
        registry,
        policy,
        config.accepted_dir,
        run_prefix="retrain",
        tags=tags,
        log_store=config.prediction_log_store(),
        embed=workspace.loop_embedding(config, log().info),
    )


@task(name="resume the judged challenger", cache_policy=NO_CACHE)
def resume_recorded(submission) -> bool:
    """A run killed after registering this submission's challenger: promote it as the gate
    said (never fine-tune again). Returns whether a challenger was registered."""
    from pipelines import workspace
    from pipelines.judge import candidate

    config = settings()
    resumed = candidate.resume_recorded(workspace.registry(config), submission.id, config.gate)
    if resumed is not None:
        _queue().mark_judged(submission, *resumed)
    return resumed is not None


@task(name="expire approvals", cache_policy=NO_CACHE)
def expire_approvals() -> list[str]:
    """Reject the challengers that waited for a person longer than gate.approval_timeout_h."""
    from pipelines import workspace
    from pipelines.judge import approval

    config = settings()
    registry = workspace.registry(config)
    return approval.expire(registry, config.gate.approval_timeout_h, notify_config=config.notify)


def _failed(flow, flow_run, state) -> None:
    """Tell people a retrain run failed (a Prefect on_failure hook)."""
    config = settings()
    notify.send(
        config.notify,
        "run-failed",
        f"retrain run {flow_run.name} failed",
        state.message or "no message",
        f"{config.prefect_url}/runs/flow-run/{flow_run.id}",
    )


@flow(name="retrain", log_prints=True, on_failure=[_failed])
def retrain(
    submission: str | None = None,
    epochs: int | None = None,
    min_accuracy: float | None = None,
    min_delta: float | None = None,
    max_recall_drop: float | None = None,
) -> list[dict]:
    """Retrain the champion on submitted batches (one submission, or every pending one).

    Args:
        submission: id of a submission in incoming/ (default: every pending one, oldest first).
        epochs: fine-tuning epochs with the top unfrozen (default: settings).
        min_accuracy: gate floor on holdout accuracy (default: settings).
        min_delta: how much better than the champion the challenger must be (default: settings).
        max_recall_drop: largest per-class recall drop the gate tolerates (default: settings).
    """
    gate = {
        k: v
        for k, v in {
            "min_accuracy": min_accuracy,
            "min_delta": min_delta,
            "max_recall_drop": max_recall_drop,
        }.items()
        if v is not None
    }
    expire_approvals()
    outcomes = []
    for sub in take_submissions(submission):  # one run at a time: the deployment's limit
        outcomes.append(_process(sub, epochs, gate))
    refused = [o for o in outcomes if o["outcome"] in ("rejected", "not-trainable")]
    if refused and len(refused) == len(outcomes):
        message = " | ".join(f"{o['name']}: {o['detail']}" for o in refused)
        return Failed(message=f"rejected: {message}", data=outcomes)
    return outcomes


def _mlflow_run(run_id: str) -> str:
    return f"{settings().mlflow_url}/#/runs/{run_id}"


def _finish(sub, outcome: str, detail: str, **extra) -> dict:
    _queue().finish(sub, outcome, detail)
    return {"submission": sub.id, "name": sub.name, "outcome": outcome, "detail": detail, **extra}


def _queue():
    return Queue.of(settings())


def _reload(sub):
    return _queue().load(sub.id)


def _process(sub, epochs: int | None, gate: dict) -> dict:
    """One submission through the steps its state asks for; its outcome."""
    from pipelines.training.finetune import NotTrainable

    step = submissions.next_step(sub.status)
    if step == "go live":
        return _go_live_again(sub)
    if step == "validate":
        result = validate_and_merge(sub)
        if result.quarantined is not None:
            summary = result.report.summary()
            create_markdown_artifact(
                reports.rejection(sub.name, summary, result.quarantined),
                key="retrain-report",
                description="rejected",
            )
            return _finish(sub, "rejected", summary)
        sub = _reload(sub)  # as the task left it: merged, with its batch id
        failpoint("merged")
        data_summary = result.report.summary()
    else:
        if resume_recorded(sub):
            failpoint("judged")
            return _go_live_again(_reload(sub))
        data_summary = f"Batch `{sub.batch_id}` (merged by an earlier run)."
    try:
        trial = finetune.with_options(timeout_seconds=settings().orchestration.train_timeout_s)(
            sub.batch_id, epochs
        )
    except NotTrainable as exc:  # this data cannot be trained on: retrying would not help
        return _finish(sub, "not-trainable", str(exc))
    judgement = judge_and_promote(sub, trial, gate)
    _queue().mark_judged(sub, judgement.version, judgement.promoted)
    failpoint("judged")
    smoke = (
        go_live(judgement.version, trial.challenger, trial.dataset) if judgement.promoted else None
    )
    failpoint("live")
    lost = judgement.decision.comparison.losses if judgement.decision.comparison else 0
    links = report_links(judgement.run_id, judgement.version, flips=lost > 0)
    create_markdown_artifact(
        reports.decision(judgement, data_summary, links, smoke),
        key="retrain-report",
        description=f"gate decision for v{judgement.version}",
    )
    outcome = (
        "promoted"
        if judgement.promoted
        else "awaiting-approval"
        if judgement.awaiting
        else "kept-champion"
    )
    event, title, body = reports.notice(judgement)
    notify.send(settings().notify, event, title, body, _mlflow_run(judgement.run_id))
    return _finish(
        sub,
        outcome,
        f"v{judgement.version} {judgement.note}".strip(),
        version=judgement.version,
        accuracy=judgement.challenger.accuracy,
        champion_accuracy=judgement.champion.accuracy if judgement.champion else None,
    )


def _go_live_again(sub) -> dict:
    """A submission judged by a run that failed or was killed afterwards: serving loads its
    version and the smoke check runs; nothing is trained or registered again."""
    from core.contract import APPROVAL_TAG, CHAMPION
    from pipelines import workspace

    config = settings()
    registry, smoke = workspace.registry(config), None
    if sub.promoted and registry.alias_version(CHAMPION) == sub.version:
        smoke = go_live(sub.version, registry.load(sub.version), workspace.dataset(config))
        failpoint("live")
    create_markdown_artifact(
        f"## Resumed `{sub.name}` at going live\n\nVersion {sub.version} was judged by an "
        f"earlier run ({'promoted' if sub.promoted else 'not promoted'}); nothing was trained "
        f"again.{reports.live_check(smoke)}\n",
        key="retrain-report",
        description=f"resumed v{sub.version}",
    )
    waits = registry.version_tags(sub.version).get(APPROVAL_TAG) == "pending"
    outcome = "promoted" if sub.promoted else "awaiting-approval" if waits else "kept-champion"
    return _finish(sub, outcome, f"v{sub.version} (resumed)", version=sub.version)
