"""Data: the embedded sample; check, add, submit, remove and version batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from refit.cli.common import (
    console,
    fail,
    follow_submission,
    load_settings,
)

sample_app = typer.Typer(help="The embedded CIFAR-10 sample.", no_args_is_help=True)
BatchArg = Annotated[
    Path, typer.Argument(help="A zip/tar/tar.gz, a folder, or a CSV of image paths and labels.")
]


data_app = typer.Typer(
    help="Check, add and version batches of labelled images.", no_args_is_help=True
)


@sample_app.command("unpack")
def sample_unpack(dest: Annotated[Path, typer.Argument(help="Directory to unpack into.")]) -> None:
    """Unpack the embedded sample (seed dataset, holdout, incoming batch) into DEST."""
    from pipelines.data.sample import unpack_sample

    settings = load_settings()
    try:
        counts = unpack_sample(settings.sample_archive, dest)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from exc
    for part, per_class in counts.items():
        console.print(f"{dest / part}: {sum(per_class.values())} images, {len(per_class)} classes")


@sample_app.command("cut")
def sample_cut() -> None:
    """Re-cut the embedded sample from the full CIFAR-10 tarball (for maintainers)."""
    from pipelines.data.sample import cut_sample

    settings = load_settings()
    with console.status(f"Cutting the sample from {settings.cifar10_archive}…"):
        try:
            counts = cut_sample(
                settings.cifar10_archive, settings.sample_archive, settings.sample_seed
            )
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from exc
    console.print(
        f"Wrote {settings.sample_archive}: "
        + ", ".join(f"{part} {n}" for part, n in sorted(counts.items()))
    )


def _print_report(report) -> None:
    colour = "green" if report.passed else "red"
    console.print(f"[{colour}]{report.summary()}[/]", highlight=False)


@data_app.command("validate")
def data_validate(batch: BatchArg) -> None:
    """Check a batch against the current dataset and report; changes nothing."""
    settings = load_settings()
    from pipelines import workspace

    with console.status("Checking…") as spinner:
        checked = workspace.check_batch(settings, batch, progress=spinner.update)
    report_dir = settings.workspace / "reports" / checked.batch_id
    checked.report.write(report_dir)
    _print_report(checked.report)
    console.print(f"Report: {report_dir / 'report.html'}")
    if not checked.report.passed:
        raise typer.Exit(code=1)


@data_app.command("add")
def data_add(batch: BatchArg) -> None:
    """Validate a batch, then merge it into the dataset and version it (or quarantine it)."""
    settings = load_settings()
    from flows.locks import LockError, dataset_writer
    from pipelines import workspace
    from pipelines.data.versions import DvcError

    with console.status("Adding…") as spinner:
        try:
            lock = dataset_writer(settings)
            result = workspace.add_batch(settings, batch, progress=spinner.update, lock=lock)
        except LockError as exc:
            raise fail(f"{exc}\nThe dataset was left as it was.") from None
        except DvcError as exc:
            raise fail(f"{exc}\nThe dataset was left as it was.") from exc
    _print_report(result.report)
    if result.quarantined is not None:
        console.print(
            f"Quarantined in {result.quarantined} (report.html inside); the dataset is unchanged."
        )
        raise typer.Exit(code=1)
    assert result.version is not None and result.added is not None
    added = "; ".join(f"{split}: {sum(c.values())}" for split, c in result.added.items())
    console.print(f"Merged ({added}). Dataset version [bold]{result.version.version}[/]")


@data_app.command("submit")
def data_submit(
    batch: BatchArg,
    follow: Annotated[bool, typer.Option(help="Follow the retrain run to its decision.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow before giving up.")] = 3600,
) -> None:
    """Queue a batch for the retrain flow (what the Retrain page and the drop folder do)."""
    settings = load_settings()
    from core.objectstore import StoreError
    from pipelines.data.submissions import Queue

    try:
        submission = Queue.of(settings).submit(batch)
    except (FileNotFoundError, StoreError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"Submitted [bold]{submission.id}[/]; the retrain flow will pick it up.")
    if follow:
        final = follow_submission(settings, submission.id, timeout)
        if final.state != "COMPLETED":
            raise typer.Exit(code=1)


@data_app.command("remove-class")
def data_remove_class(
    label: Annotated[str, typer.Argument(help="The class to take out of the dataset.")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the new version).")],
) -> None:
    """Take a class that should not have been merged out of the dataset, as a new recorded
    version (earlier versions keep it; the champion's head is not changed)."""
    settings = load_settings()
    from flows.locks import LockError, dataset_writer
    from pipelines import workspace
    from pipelines.data.versions import DvcError

    with console.status(f"Removing {label}…") as spinner:
        try:
            lock = dataset_writer(settings)
            version = workspace.remove_class(settings, label, reason, spinner.update, lock)
        except (ValueError, DvcError, LockError) as exc:
            raise fail(f"{exc}\nThe dataset was left as it was.") from exc
    console.print(f"Removed {label!r}. Dataset version [bold]{version.version}[/]")


@data_app.command("versions")
def data_versions() -> None:
    """List the recorded dataset versions (the current one is marked)."""
    settings = load_settings()
    from pipelines.workspace import store as dataset_store

    store = dataset_store(settings)
    current = store.current_version()
    table = Table("", "version", "created", "batch", "train", "holdout", "classes", "note")
    for v in store.versions():
        classes = sorted(set().union(*(c.keys() for c in v.counts.values())))
        table.add_row(
            "*" if v.version == current else "",
            v.version,
            v.created_at,
            v.batch_id,
            str(sum(v.counts.get("train", {}).values())),
            str(sum(v.counts.get("holdout", {}).values())),
            str(len(classes)),
            v.note,
        )
    console.print(table)


@data_app.command("checkout")
def data_checkout(
    version: Annotated[str, typer.Argument(help="A version id (a unique prefix is enough).")],
) -> None:
    """Restore the dataset directory to a recorded version."""
    settings = load_settings()
    from pipelines.data.versions import DvcError
    from pipelines.workspace import store

    with console.status(f"Restoring {version}…"):
        try:
            record = store(settings).checkout(version)
        except DvcError as exc:
            raise fail(str(exc)) from exc
    console.print(f"Dataset is now version {record.version} (from {record.batch_id}).")
