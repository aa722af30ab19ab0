"""The loop from production: drift checks and the images worth labelling next."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from refit.cli.common import (
    console,
    fail,
    load_settings,
    registry_call,
    registry_of,
)

app = typer.Typer()
label_app = typer.Typer(
    help="Choose the logged production images worth labelling next.", no_args_is_help=True
)


@app.command()
def drift() -> None:
    """Check the live prediction log for drift from the champion's training images now
    (the `drift` deployment does it on a schedule); logged to MLflow."""
    settings = load_settings()
    from pipelines.loop import monitor

    with console.status("Checking the prediction log…"):
        check = registry_call(
            lambda: monitor.check_live(
                registry_of(settings),
                settings.prediction_log_store(),
                settings.loop.drift_images,
                settings.validation.drift_alpha,
                settings.loop.drift_permutations,
            )
        )
    colour = {"checked": "red" if check.drifted else "green"}.get(check.status, "yellow")
    console.print(f"[{colour}]{check.message}[/]", highlight=False)
    if check.run_id:
        console.print(f"MLflow: {settings.mlflow_url}/#/experiments/-/runs/{check.run_id}")


@app.command("live-accuracy")
def live_accuracy() -> None:
    """Compare the champion with the previous version on labelled production images now
    (the `drift` deployment does it on a schedule); logged to MLflow. With
    loop.auto_rollback, a champion that is worse is rolled back."""
    settings = load_settings()
    from pipelines.judge import live

    with console.status("Both versions on the labelled production images…"):
        found = registry_call(
            lambda: live.check(
                registry_of(settings),
                settings.prediction_log_store(),
                settings.loop.rollback_min_labels,
                settings.gate.alpha,
                settings.loop.auto_rollback,
                settings.notify,
            )
        )
    console.print(f"[{'red' if found.worse else 'green'}]{found.message}[/]", highlight=False)
    if found.run_id:
        console.print(f"MLflow: {settings.mlflow_url}/#/experiments/-/runs/{found.run_id}")


@label_app.command("next")
def label_next(
    out: Annotated[
        Path, typer.Option(help="Where to write the batch skeleton: a .zip or a new folder.")
    ],
    n: Annotated[int, typer.Option("--n", min=1, help="How many images to choose.")] = 200,
) -> None:
    """Export the logged images worth labelling next as a batch skeleton: the images and a
    labels.csv pre-filled with the champion's guess. Correct the labels, then
    `refit data submit` it like any batch."""
    settings = load_settings()
    from core.contract import CHAMPION
    from pipelines import workspace
    from pipelines.loop import labelqueue
    from pipelines.loop.features import TrainingFeatures

    registry = registry_of(settings)
    version = registry_call(lambda: registry.alias_version(CHAMPION))
    data = registry_call(lambda: registry.training_features(version)) if version else None
    known = set(workspace.dataset(settings).index.get("sha256", []))  # labelled already
    store = settings.prediction_log_store()
    items, view = labelqueue.next_up(
        store,
        TrainingFeatures.from_bytes(data) if data else None,
        n,
        settings.loop.queue_images,
        known,
    )
    if view.unreadable:
        console.print(f"[yellow]Skipped {view.unreadable} unreadable log lines.[/]")
    if not items:
        raise fail(
            f"nothing to label: the prediction log holds {len(view)} images, none unlabelled"
        )
    try:
        path, written, gone = labelqueue.export(items, store, out)
    except FileExistsError as exc:
        raise fail(str(exc)) from exc
    if len(items) < n:
        console.print(
            f"[yellow]Asked for {n}; the log holds only {len(items)} unlabelled images.[/]"
        )
    if gone:
        console.print(f"[yellow]{len(gone)} images left out: retention removed them.[/]")
    reasons = Counter(reason.split(" (")[0] for item in items for reason in item.reasons)
    why = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    console.print(f"Wrote {written} images + labels.csv to {path} ({why}).")
    console.print("Correct the `label` column, then: refit data submit " + str(path))
