"""The retrain flow: every submitted batch goes ingest → validate → merge + DVC version →
fine-tune (growing the head for new classes) → judge champion vs challenger → register,
promote → serving reload → live smoke check → report.

Orchestration only: each task calls one ``pipelines`` function. A rejected batch is
quarantined and never reaches the dataset; a failed or killed run never moves the champion
alias (only ``judge`` moves it, after the gate). A run killed after the merge leaves the
submission in the queue marked ``merged``; the next run resumes it at fine-tuning.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows.common import log, reload_serving, report_links, settings, smoke_check
from pipelines.intake import intake_lock


@task(name="take submissions", cache_policy=NO_CACHE)
def take_submissions(submission: str | None) -> list:
    from pipelines import submissions

    config = settings()
    submissions.adopt_dropped(config.incoming_dir, config.orchestration.settle_s)
    queue = submissions.pending(config.incoming_dir)
    if submission is not None:
        queue = [s for s in queue if s.id == submission]
        if not queue:  # an earlier run (e.g. the scheduled one) took it already
            log().info("submission %s is no longer pending; nothing to do", submission)
    return queue


@task(name="validate and merge", cache_policy=NO_CACHE)
def validate_and_merge(submission):
    """Ingest + GX validation; merge and version the dataset, or quarantine the batch."""
    from pipelines import submissions
    from pipelines.intake import add_batch
    from refit.wiring import intake

    config = settings()
    store, paths = intake(config)
    logger = log()
    result = add_batch(
        submission.batch,
        store,
        paths,
        config.ingest,
        config.validation,
        config.split,
        progress=logger.info,
    )
    if result.version is not None:
        submissions.mark_merged(submission, result.version.batch_id)
    return result


@task(name="fine-tune", cache_policy=NO_CACHE)
def finetune(batch_id: str, epochs: int | None):
    """Fine-tune the champion on the merged batch with replay; grow the head if needed."""
    from pipelines.dataset import load_index
    from pipelines.train import finetune_on_batch
    from refit.wiring import registry

    config = settings()
    champion = registry(config).load("champion")
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

    index = load_index(config.dataset_dir)
    challenger, fits = finetune_on_batch(
        champion, config.dataset_dir, index, batch_id, finetune_config, progress=progress
    )
    update_progress_artifact(progress_id, 100.0)
    return champion, challenger, fits


@task(name="judge and promote", cache_policy=NO_CACHE)
def judge_and_promote(champion, challenger, fits, batch_id: str, gate_overrides: dict):
    """Evaluate champion and challenger on the same holdout; register; promote if blessed."""
    from pipelines.candidate import judge_finetune
    from pipelines.dataset import evaluation_holdout, load_index
    from pipelines.train import images_from_index
    from refit.wiring import intake, registry

    config = settings()
    store, _ = intake(config)
    index = load_index(config.dataset_dir)
    holdout = images_from_index(
        config.dataset_dir, evaluation_holdout(index), champion.input_size, challenger.class_names
    )
    return judge_finetune(
        champion,
        challenger,
        fits,
        holdout,
        registry(config),
        config.gate.model_copy(update=gate_overrides),
        batch_id=batch_id,
        params=config.finetune.model_dump(),
        index=index,
        accepted_dir=config.accepted_dir,
        dataset_dir=config.dataset_dir,
        dataset_version=store.current_version(),
        run_prefix="retrain",
    )


def _rejection_report(submission, result) -> str:
    return (
        f"## Batch `{submission.name}` rejected\n\n{result.report.summary()}\n\n"
        f"Quarantined in `{result.quarantined}` (report.html inside). "
        "The dataset and the champion are unchanged.\n"
    )


def _decision_report(judgement, result_summary: str, smoke: dict | None) -> str:
    challenger, champion = judgement.challenger, judgement.champion
    rows = [
        ("accuracy", challenger.accuracy, champion.accuracy if champion else None),
        ("macro F1", challenger.macro_f1, champion.macro_f1 if champion else None),
        ("ECE", challenger.ece, champion.ece if champion else None),
    ]
    table = "\n".join(
        f"| {name} | {new:.4f} | {'-' if old is None else f'{old:.4f}'} |"
        for name, new, old in rows
    )
    per_class = "\n".join(
        f"| {name} | {stats['recall']:.3f} | {champion.per_class[name]['recall']:.3f} |"
        if champion and name in champion.per_class
        else f"| {name} | {stats['recall']:.3f} | new |"
        for name, stats in challenger.per_class.items()
    )
    live = (
        f"\n\n### Live check\nServing answers with v{smoke['version']}; "
        f"{smoke['agreement']:.1%} of {smoke['images']} holdout images match the offline "
        f"predictions (live accuracy {smoke['accuracy']:.4f})."
        if smoke
        else ""
    )
    return (
        f"{judgement.decision.markdown()}\n### Champion vs challenger (same holdout)\n"
        f"| metric | challenger v{judgement.version} | champion "
        f"{'v' + judgement.champion_version if judgement.champion_version else ''} |\n"
        f"|---|---|---|\n{table}\n\n### Recall per class\n| class | challenger | champion |\n"
        f"|---|---|---|\n{per_class}\n\n### Data\n{result_summary}\n\n"
        f"{report_links(judgement.run_id, judgement.version)}{live}\n"
    )


@flow(name="retrain", log_prints=True)
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

    config = settings()
    gate = {
        k: v
        for k, v in {
            "min_accuracy": min_accuracy,
            "min_delta": min_delta,
            "max_recall_drop": max_recall_drop,
        }.items()
        if v is not None
    }
    outcomes, rejected = [], []
    with intake_lock(config.workspace / "retrain.lock"):  # one retrain at a time
        for sub in take_submissions(submission):
            outcomes.append(_process(sub, epochs, gate, rejected))
    if rejected and len(rejected) == len(outcomes):
        return Failed(message="rejected: " + " | ".join(rejected), data=outcomes)
    return outcomes


def _process(sub, epochs: int | None, gate: dict, rejected: list[str]) -> dict:
    """One submission through every step; its outcome."""
    from pipelines import submissions

    config = settings()
    if sub.status == "merged":
        batch_id, summary = sub.batch_id, f"Batch `{sub.batch_id}` (merged by an earlier run)."
    else:
        result = validate_and_merge(sub)
        if result.quarantined is not None:
            create_markdown_artifact(
                _rejection_report(sub, result), key="retrain-report", description="rejected"
            )
            submissions.finish(sub, config.submissions_dir, "rejected", result.report.summary())
            rejected.append(f"{sub.name}: {result.report.summary()}")
            return {"submission": sub.id, "outcome": "rejected"}
        batch_id, summary = result.version.batch_id, result.report.summary()
    try:
        champion, challenger, fits = finetune.with_options(
            timeout_seconds=config.orchestration.train_timeout_s
        )(batch_id, epochs)
    except ValueError as exc:  # e.g. no training images: retrying would fail forever
        submissions.finish(sub, config.submissions_dir, "not-trainable", str(exc))
        rejected.append(f"{sub.name}: {exc}")
        return {"submission": sub.id, "outcome": "not-trainable"}
    judgement = judge_and_promote(champion, challenger, fits, batch_id, gate)
    smoke = None
    if judgement.promoted:
        reload_serving(judgement.version)
        smoke = smoke_check(judgement.version, challenger)
    create_markdown_artifact(
        _decision_report(judgement, summary, smoke),
        key="retrain-report",
        description=f"gate decision for v{judgement.version}",
    )
    outcome = "promoted" if judgement.promoted else "kept-champion"
    submissions.finish(sub, config.submissions_dir, outcome, f"v{judgement.version}")
    return {
        "submission": sub.id,
        "outcome": outcome,
        "version": judgement.version,
        "accuracy": judgement.challenger.accuracy,
        "champion_accuracy": judgement.champion.accuracy if judgement.champion else None,
    }
