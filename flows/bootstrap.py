"""The bootstrap flow: the first champion. Seeds the dataset (the embedded sample's seed
batch by default) if it is empty, then takes the built-in model, imports a user's model
(safe mode), or trains one from scratch; judges it on the holdout, registers and promotes
it, and has serving load it."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import locks
from flows.common import go_live, log, report_links, settings
from pipelines.judge import reports


@task(name="seed the dataset", cache_policy=NO_CACHE)
def seed_dataset(seed: str | None):
    """Add the seed batch when the dataset is empty; None when there is nothing to do."""
    from pipelines import workspace
    from pipelines.data.sample import unpack_sample

    config = settings()
    if not workspace.dataset(config).empty:
        return None
    if seed is None:
        unpacked = config.workspace / "sample"
        if not (unpacked / "seed").is_dir():
            unpack_sample(config.sample_archive, unpacked)
        seed = str(unpacked / "seed")
    lock = locks.dataset_writer(config)
    return workspace.add_batch(config, Path(seed), progress=log().info, lock=lock)


@task(name="make the model", cache_policy=NO_CACHE)
def make_model(
    model: str | None,
    classes: str | None,
    from_scratch: bool,
    epochs: int | None,
    labels: str | None = None,
    pixels: str | None = None,
):
    from pipelines import workspace
    from pipelines.models.modelfile import load_refit_model
    from pipelines.training import scratch
    from pipelines.training.imports import import_user_model

    config = settings()
    if from_scratch:
        size = (config.architecture.input_size,) * 2
        images, card = scratch.dataset_images(workspace.dataset(config), "train", size)
        train_config = config.train.model_copy(update={"epochs": epochs} if epochs else {})
        return scratch.train_from_scratch(
            images,
            config.architecture,
            train_config,
            card,
            progress=log().info,
            weights_dir=config.weights_dir,
        )
    if model is None:
        return load_refit_model(config.builtin_model)
    names = [c.strip() for c in classes.split(",")] if classes else None
    if names is None and labels is None and Path(model).suffix == ".keras":
        return load_refit_model(Path(model))  # a Refit file carries its class names
    imported = import_user_model(
        Path(model),
        names,
        Path(labels) if labels else None,
        pixels,
        limits=config.ingest,
        progress=log().info,
    )
    for note in imported.notes:
        log().info(note)
    for warning in imported.warnings:
        log().warning(warning)
    return imported.loaded


@task(name="judge and promote", cache_policy=NO_CACHE)
def judge_first(challenger, reason: str):
    from pipelines import workspace
    from pipelines.judge.candidate import judge_model_file
    from pipelines.judge.registry_writes import CandidateRun

    config = settings()
    dataset = workspace.dataset(config)
    run = CandidateRun(f"bootstrap ({reason})", tags={"reason": reason, "recipe": "bootstrap"})
    registry, log_store = workspace.registry(config), config.prediction_log_store()
    embed = workspace.loop_embedding(config, log().info)
    judgement = judge_model_file(challenger, dataset, registry, config.gate, run, log_store, embed)
    return judgement, dataset


@flow(name="bootstrap", log_prints=True)
def bootstrap_flow(
    model: str | None = None,
    classes: str | None = None,
    train_from_scratch: bool = False,
    epochs: int | None = None,
    seed: str | None = None,
    labels: str | None = None,
    pixels: str | None = None,
):
    """Make the first champion.

    Args:
        model: a .keras/.h5 model file to start from (default: the built-in model).
        classes: the model's class names in output order, comma-separated (for files that
            do not carry them).
        labels: a class-list file instead (one name per line, or Teachable Machine's
            labels.txt).
        pixels: the pixel range the model expects (see `refit model import --help`).
        train_from_scratch: train the configured architecture on the dataset instead.
        epochs: epochs when training from scratch (default: settings).
        seed: a batch to start the dataset with when it is empty (default: the embedded
            sample's seed batch).
    """
    seeded = seed_dataset(seed)
    if seeded is not None and seeded.quarantined is not None:
        return Failed(message=f"seed batch rejected: {seeded.report.summary()}")
    challenger = make_model(model, classes, train_from_scratch, epochs, labels, pixels)
    reason = "from scratch" if train_from_scratch else Path(model).name if model else "built-in"
    judgement, dataset = judge_first(challenger, reason)
    smoke = go_live(judgement.version, challenger, dataset) if judgement.promoted else None
    links = report_links(judgement.run_id, judgement.version)
    create_markdown_artifact(reports.bootstrap(judgement, links, smoke), key="bootstrap-report")
    return {"version": judgement.version, "promoted": judgement.promoted}
