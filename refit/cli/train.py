"""Training: a model from scratch, or the champion fine-tuned on a merged batch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from refit.cli.common import (
    console,
    fail,
    load_settings,
    print_judgement,
    registry_call,
)

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer(help="Train models: from scratch, or fine-tune.", no_args_is_help=True)

ModelOut = Annotated[Path | None, typer.Option(help="Model file to write (.keras).")]
SourceOpt = Annotated[
    Path | None,
    typer.Option(help="Batch-shaped images to train on (default: the dataset's train split)."),
]
ExcludeSampleOpt = Annotated[
    bool,
    typer.Option(
        help="Leave out the embedded sample's holdout and incoming images; report on its holdout."
    ),
]
ParentOpt = Annotated[
    Path | None, typer.Option(help="A model file to fine-tune (default: the registry's champion).")
]
BatchIdOpt = Annotated[
    str | None,
    typer.Option(help="The merged batch to learn from (default: the latest dataset version's)."),
]
RegisterOpt = Annotated[
    bool, typer.Option(help="Judge the result against the champion; register, promote if blessed.")
]


def model_out(settings: Settings, out: Path | None, recipe: str) -> Path:
    """Where a trained model goes: ``out``, or a timestamped file in the workspace."""
    import time

    return out or settings.workspace / "models" / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}.keras"


def save_model_file(loaded, out: Path) -> None:
    from pipelines.training.scratch import save_with_card

    save_with_card(loaded, out)
    console.print(f"Saved {out} and its card {out.with_suffix('.md')}")


@app.command("bootstrap")
def train_bootstrap(
    source: SourceOpt = None,
    exclude_class: Annotated[list[str], typer.Option(help="Leave this class out.")] = [],  # noqa: B006
    exclude_sample: ExcludeSampleOpt = False,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    out: ModelOut = None,
) -> None:
    """Train a model from scratch and save it with its class names and a model card."""
    import time

    settings = load_settings()
    from pipelines import workspace
    from pipelines.training import scratch

    started = time.monotonic()
    config = settings.train.model_copy(update={"epochs": epochs} if epochs else {})
    size = (settings.architecture.input_size,) * 2
    try:
        chosen = scratch.choose_source(
            workspace.dataset(settings),
            size,
            source=source,
            exclude_classes=set(exclude_class),
            sample_archive=settings.sample_archive if exclude_sample else None,
            staging_dir=settings.staging_dir,
            limits=settings.ingest,
            progress=console.print,
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    try:
        loaded = scratch.train_from_scratch(
            chosen.images,
            settings.architecture,
            config,
            chosen.card,
            chosen.holdout,
            console.print,
            settings.weights_dir,
        )
    except ValueError as exc:  # weights unavailable, too few images
        raise fail(str(exc)) from exc
    loaded.card["wall_time_s"] = round(time.monotonic() - started, 1)
    loaded.card["command"] = "refit " + " ".join(sys.argv[1:])
    save_model_file(loaded, model_out(settings, out, "bootstrap"))


@app.command("finetune")
def train_finetune(
    model: ParentOpt = None,
    batch_id: BatchIdOpt = None,
    register: RegisterOpt = True,
    out: ModelOut = None,
) -> None:
    """Fine-tune on a merged batch with replay (growing the head for new classes), then
    judge the challenger against the champion and promote it only if the gate blesses it."""
    settings = load_settings()
    from pipelines import workspace
    from pipelines.judge import candidate
    from pipelines.training.finetune import NotTrainable

    versions = workspace.store(settings).versions()
    batch_id = batch_id or (versions[-1].batch_id if versions else None)
    dataset = workspace.dataset(settings)
    if batch_id is None or dataset.empty:
        raise fail("no dataset yet: add a batch with `refit data add` first")
    registry = workspace.registry(settings)
    parent = _parent_model(registry, model)
    try:
        trial = candidate.challenge(parent, dataset, batch_id, settings.finetune, console.print)
    except NotTrainable as exc:
        raise fail(str(exc)) from exc
    log_store = settings.prediction_log_store()
    assessment = candidate.assess(trial.challenger, trial.holdout, settings.gate, parent, log_store)
    for key, value in assessment.summary().items():
        console.print(f"  {key}: {value}")
    trial.challenger.card["holdout"] = assessment.summary()
    save_model_file(trial.challenger, model_out(settings, out, "finetune"))
    if register:
        embed = workspace.loop_embedding(settings, console.print)
        with console.status("Judging against the champion…"):
            outcome = registry_call(
                lambda: candidate.judge_challenge(
                    trial,
                    registry,
                    settings.gate,
                    settings.accepted_dir,
                    assessment=assessment,
                    log_store=log_store,
                    embed=embed,
                )
            )
        print_judgement(outcome)


def _parent_model(registry, model: Path | None):
    """What to fine-tune: a model file, or the registry's champion (downloaded once)."""
    from pipelines.judge.candidate import Baseline, current_champion
    from pipelines.models.modelfile import ModelRefused, load_refit_model

    try:
        if model is not None:
            return Baseline(load_refit_model(model))
        champion = registry_call(lambda: current_champion(registry))
    except (ModelRefused, OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if champion is None:
        raise fail(
            f"{registry.name} has no version with alias 'champion'; register one first "
            "(refit model register models/builtin/model.keras)"
        )
    return champion
