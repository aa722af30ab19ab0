"""Models: import a user's file, register, list, promote, roll back, history, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from refit.cli.common import (
    console,
    fail,
    load_settings,
    print_judgement,
    registry_call,
    registry_of,
)

app = typer.Typer(help="Import and manage models.", no_args_is_help=True)


@app.command("import")
def model_import(
    file: Annotated[
        Path, typer.Argument(help="A .keras, a Keras 2 .h5, or Teachable Machine's .zip export.")
    ],
    classes: Annotated[
        str | None, typer.Option(help="Class names in output order, comma-separated.")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Class-list file: one name per line, or labels.txt ('0 cardboard')."),
    ] = None,
    pixels: Annotated[
        str | None,
        typer.Option(
            help="Pixels the model expects: 0-255, 0-1, -1-1, mean=R,G,B/std=R,G,B or "
            "keras.applications.NAME (default: calibrated, Teachable Machine's, else 0-255)."
        ),
    ] = None,
    calibrate: Annotated[
        Path | None,
        typer.Option(help="A labelled batch of the model's classes: measure the pixel range."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the .keras.")] = None,
) -> None:
    """Import a user's classifier: inspected before loading (no Lambda, no custom code),
    converted to Keras 3, its pixel range wrapped in, saved as a Refit .keras."""
    settings = load_settings()
    from pipelines.models.modelfile import ModelRefused, save_model
    from pipelines.training.imports import import_user_model

    names = [c for c in classes.split(",")] if classes else None
    try:
        imported = import_user_model(
            file, names, labels, pixels, calibrate, settings.ingest, progress=console.print
        )
    except ModelRefused as exc:
        raise fail(str(exc)) from exc
    loaded = imported.loaded
    if imported.calibration is not None:
        console.print("Agreement with the batch's labels under each pixel range:")
        console.print(imported.calibration.table(), highlight=False)
    for note in imported.notes:
        console.print(f"[dim]{note}[/]", highlight=False)
    for warning in imported.warnings:
        console.print(f"[yellow]Warning: {warning}[/]", highlight=False)
    stem = file.parent.name if file.stem == "keras_model" else file.stem
    out = out or settings.workspace / "models" / f"imported-{stem}.keras"
    save_model(loaded, out)
    height, width = loaded.input_size
    console.print(
        f"Imported {file}: {width}x{height} RGB in, pixels {loaded.card['pixels']}, "
        f"{len(loaded.class_names)} classes ({', '.join(loaded.class_names)}). Saved {out}",
        highlight=False,
    )


@app.command("register")
def model_register(
    file: Annotated[Path, typer.Argument(help="A Refit model file (.keras).")],
    reason: Annotated[str, typer.Option(help="Why this model is a candidate.")] = "registered",
) -> None:
    """Judge a model file against the champion on the dataset holdout; promote if blessed."""
    settings = load_settings()
    from pipelines import workspace
    from pipelines.judge.candidate import judge_model_file
    from pipelines.judge.registry_writes import CandidateRun
    from pipelines.models.evaluate import EvaluationError
    from pipelines.models.modelfile import ModelRefused, load_refit_model

    try:
        challenger = load_refit_model(file)
    except (ModelRefused, OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    run = CandidateRun(f"register {file.name}", tags={"reason": reason})
    embed = workspace.loop_embedding(settings, console.print)
    with console.status("Evaluating, registering…"):
        try:
            outcome = registry_call(
                lambda: judge_model_file(
                    challenger,
                    workspace.dataset(settings),
                    workspace.registry(settings),
                    settings.gate,
                    run,
                    settings.prediction_log_store(),
                    embed,
                )
            )
        except EvaluationError as exc:
            raise fail(str(exc)) from exc
    print_judgement(outcome)


@app.command("list")
def model_list() -> None:
    """Registered versions with aliases, holdout accuracy and dataset version."""
    settings = load_settings()
    rows = registry_call(lambda: registry_of(settings).versions())
    table = Table("version", "aliases", "created", "accuracy", "gate", "dataset", "classes")
    for row in rows:
        accuracy = f"{row.accuracy:.4f}" if row.accuracy is not None else ""
        table.add_row(
            row.version,
            ", ".join(row.aliases),
            row.created,
            accuracy,
            ", ".join(filter(None, [row.decision, row.approval and f"approval {row.approval}"])),
            (row.dataset_version or "")[:12],
            str(len(row.class_names)),
        )
    console.print(table)


@app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
) -> None:
    """Make a version the champion by hand (recorded; bypasses the gate)."""
    settings = load_settings()
    registry_call(lambda: registry_of(settings).promote(version, reason, action="manual promote"))
    console.print(f"Version {version} is now the champion.")


@app.command("rollback")
def model_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
    to: Annotated[
        str | None, typer.Option(help="Version to go back to (default: previous).")
    ] = None,
) -> None:
    """Move the champion back to the previous version (or to --to)."""
    from core import notify

    settings = load_settings()
    target = registry_call(lambda: registry_of(settings).rollback(reason, to))
    console.print(f"Rolled back: version {target} is the champion again.")
    notify.send(settings.notify, "rolled-back", f"rolled back to v{target}", f"Reason: {reason}.")


@app.command("waiting")
def model_waiting() -> None:
    """Challengers waiting for a person's approval (gate.approval), oldest first."""
    from pipelines.judge import approval

    settings = load_settings()
    registry = registry_of(settings)
    expired = registry_call(
        lambda: approval.expire(
            registry, settings.gate.approval_timeout_h, notify_config=settings.notify
        )
    )
    for version in expired:
        console.print(f"[yellow]Version {version}: approval timed out, rejected.[/]")
    found = registry_call(lambda: approval.waiting(registry))
    if not found:
        console.print("No challenger waits for an approval.")
        return
    table = Table("version", "gate", "judged against", "waiting", "times out in")
    for item in reversed(found):
        hours = item.hours()
        table.add_row(
            item.version,
            item.outcome,
            f"v{item.champion}" if item.champion else "no champion",
            f"{hours:.1f} h",
            f"{max(0.0, settings.gate.approval_timeout_h - hours):.1f} h",
        )
    console.print(table)


@app.command("approve")
def model_approve(
    version: Annotated[str, typer.Argument(help="The waiting version (`refit model waiting`).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
) -> None:
    """Approve a waiting challenger: it becomes the champion (only over the champion it was
    judged against)."""
    _decide(version, reason, "approve")


@app.command("reject")
def model_reject(
    version: Annotated[str, typer.Argument(help="The waiting version (`refit model waiting`).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
) -> None:
    """Reject a waiting challenger: the champion stays."""
    _decide(version, reason, "reject")


def _decide(version: str, reason: str, action: str) -> None:
    from pipelines.judge import approval

    settings = load_settings()
    link = f"{settings.mlflow_url}/#/models/{settings.registered_model_name}/versions/{version}"
    registry_call(
        lambda: approval.decide(
            registry_of(settings), version, action, reason,
            settings.gate.approval_timeout_h, settings.notify, link,
        )
    )  # fmt: skip
    if action == "approve":
        console.print(f"Approved: version {version} is the champion.")
    else:
        console.print(f"Rejected: version {version} stays registered; the champion is unchanged.")


@app.command("history")
def model_history() -> None:
    """Every alias move: who, what, why, when."""
    settings = load_settings()
    table = Table("when", "who", "action", "version", "from", "reason")
    for entry in registry_call(lambda: registry_of(settings).history()):
        table.add_row(
            entry["when"],
            entry["who"],
            entry["action"],
            entry["version"],
            str(entry.get("from_version") or ""),
            entry["reason"],
        )
    console.print(table)


@app.command("export")
def model_export(
    out: Annotated[Path, typer.Option(help="File to write: .keras, or .h5 for older tools.")],
    alias: Annotated[str, typer.Option(help="Alias to export.")] = "champion",
    version: Annotated[str | None, typer.Option(help="Export this version instead.")] = None,
) -> None:
    """Download a registered model as a file (class names inside)."""
    settings = load_settings()
    path = registry_call(lambda: registry_of(settings).export(version or alias, out))
    console.print(f"Wrote {path}")
