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

from flows.common import log, reload_serving, report_links, settings, smoke_check


@task(name="seed the dataset", cache_policy=NO_CACHE)
def seed_dataset(seed: str | None):
    """Add the seed batch when the dataset is empty; None when there is nothing to do."""
    from pipelines.dataset import load_index
    from pipelines.intake import add_batch
    from pipelines.sample import unpack_sample
    from refit.wiring import intake

    config = settings()
    if not load_index(config.dataset_dir).empty:
        return None
    if seed is None:
        unpacked = config.workspace / "sample"
        if not (unpacked / "seed").is_dir():
            unpack_sample(config.sample_archive, unpacked)
        seed = str(unpacked / "seed")
    store, paths = intake(config)
    return add_batch(
        Path(seed),
        store,
        paths,
        config.ingest,
        config.validation,
        config.split,
        progress=log().info,
    )


@task(name="make the model", cache_policy=NO_CACHE)
def make_model(model: str | None, classes: str | None, from_scratch: bool, epochs: int | None):
    from pipelines.dataset import load_index
    from pipelines.modelfile import import_model, load_refit_model
    from pipelines.train import bootstrap, images_from_index

    config = settings()
    if from_scratch:
        index = load_index(config.dataset_dir)
        rows = index[index["split"] == "train"]
        size = (config.architecture.input_size, config.architecture.input_size)
        train_config = config.train.model_copy(update={"epochs": epochs} if epochs else {})
        images = images_from_index(config.dataset_dir, rows, size)
        loaded, _ = bootstrap(images, config.architecture, train_config, progress=log().info)
        return loaded
    if model is None:
        return load_refit_model(config.builtin_model)
    names = [c.strip() for c in classes.split(",")] if classes else None
    if names is None:
        return load_refit_model(Path(model))  # a Refit file carries its class names
    return import_model(Path(model), names)


@task(name="judge and promote", cache_policy=NO_CACHE)
def judge_first(challenger, reason: str):
    from pipelines.candidate import judge
    from pipelines.dataset import evaluation_holdout, load_index
    from pipelines.train import images_from_index
    from refit.wiring import intake, registry

    config = settings()
    store, _ = intake(config)
    index = load_index(config.dataset_dir)
    holdout = images_from_index(
        config.dataset_dir, evaluation_holdout(index), challenger.input_size
    )
    return judge(
        challenger,
        holdout,
        registry(config),
        config.gate,
        run_name=f"bootstrap ({reason})",
        tags={"reason": reason, "recipe": "bootstrap"},
        dataset=index,
        dataset_dir=config.dataset_dir,
        dataset_version=store.current_version(),
        params=challenger.card.get("train", {}),
    )


@flow(name="bootstrap", log_prints=True)
def bootstrap_flow(
    model: str | None = None,
    classes: str | None = None,
    train_from_scratch: bool = False,
    epochs: int | None = None,
    seed: str | None = None,
):
    """Make the first champion.

    Args:
        model: a .keras/.h5 model file to start from (default: the built-in model).
        classes: the model's class names in output order, comma-separated (for files that
            do not carry them).
        train_from_scratch: train the configured architecture on the dataset instead.
        epochs: epochs when training from scratch (default: settings).
        seed: a batch to start the dataset with when it is empty (default: the embedded
            sample's seed batch).
    """
    seeded = seed_dataset(seed)
    if seeded is not None and seeded.quarantined is not None:
        return Failed(message=f"seed batch rejected: {seeded.report.summary()}")
    challenger = make_model(model, classes, train_from_scratch, epochs)
    reason = "from scratch" if train_from_scratch else Path(model).name if model else "built-in"
    judgement = judge_first(challenger, reason)
    smoke = None
    if judgement.promoted:
        reload_serving(judgement.version)
        smoke = smoke_check(judgement.version, challenger)
    create_markdown_artifact(
        f"{judgement.decision.markdown()}\n{report_links(judgement.run_id, judgement.version)}"
        + (f"\nLive check: {smoke}\n" if smoke else ""),
        key="bootstrap-report",
    )
    return {"version": judgement.version, "promoted": judgement.promoted}
