"""What the command groups share: the consoles, settings, errors, the registry, following a
run, and the one renderer of decisions and reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from core.settings import Settings


# soft_wrap: lines go out whole (a terminal wraps them; a pipe or a CI log keeps paths and
# URLs in one piece)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def load_settings() -> Settings:
    """Load the settings (exporting the tool environment before any heavy import) and, unless
    --verbose, keep the libraries' own lines off the terminal."""
    from pydantic import ValidationError

    from core.settings import config_file, get_settings
    from refit import quiet

    try:
        settings = get_settings()
    except ValidationError as exc:
        raise fail(bad_settings(exc, config_file())) from None
    if not settings.verbose:
        quiet.quiet_libraries()
    return settings


def bad_settings(exc, path: Path) -> str:
    """Each rule the settings broke, named as a setting and as its REFIT_* variable."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        variable = "REFIT_" + "__".join(str(part) for part in error["loc"]).upper()
        rule = "not a setting" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {key} ({variable}): {rule}")
    return f"the settings (from REFIT_* variables and {path}) are invalid:\n" + "\n".join(lines)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=1)


def registry_of(settings: Settings):
    """The model registry."""
    from pipelines.workspace import registry

    return registry(settings)


def registry_call(fn):
    """Run a registry action, turning its errors into a clear message and exit code 1."""
    from pipelines.judge.registry_client import RegistryError

    try:
        return fn()
    except RegistryError as exc:
        raise fail(str(exc)) from exc


def print_judgement(outcome) -> None:
    print_markdown(outcome.decision.markdown())
    if outcome.note:
        console.print(f"[yellow]{outcome.note}[/]", highlight=False)
    state = "promoted to champion" if outcome.promoted else "registered, champion unchanged"
    console.print(f"Version {outcome.version}: {state}.")


def follow_submission(settings: Settings, submission_id: str, timeout: float):
    """Wait for the run that takes a submission, print its steps and its report."""
    import time

    from core import runs
    from pipelines.data.submissions import Queue

    queue_of = Queue.of(settings)
    deadline, seen = time.monotonic() + timeout, time.monotonic()
    with console.status("Waiting for a retrain run to take it…") as spinner:
        while (run_id := runs.find_submission_run(submission_id)) is None:
            queue = [s.id for s in queue_of.pending()]
            ahead = queue.index(submission_id) if submission_id in queue else 0
            spinner.update(f"Queued, {ahead} submission(s) ahead; waiting for a retrain run…")
            if runs.in_hand(submission_id):  # a run is on its way to it
                seen = time.monotonic()
            if time.monotonic() - seen > 300 or time.monotonic() > deadline:
                raise fail(
                    "no retrain run took the submission; check `refit status` and the worker "
                    f"log in {settings.log_dir}. The batch stays queued in {settings.store_url}."
                )
            time.sleep(2)
    console.print(f"Flow run: {settings.prefect_url}/runs/flow-run/{run_id}")
    return follow_run(run_id, timeout)


def print_markdown(text: str) -> None:
    """The one renderer of decisions and reports: the markdown that Prefect artifacts and
    MLflow runs carry, drawn for the terminal."""
    from rich.markdown import Markdown

    console.print(Markdown(text))


def follow_run(run_id: str, timeout: float):
    from core import runs

    shown: set[tuple[str, str]] = set()

    def show(current) -> None:
        for step in current.steps:
            if (step["name"], step["state"]) not in shown:
                shown.add((step["name"], step["state"]))
                console.print(f"  {step['name']}: {step['state']}")

    final = runs.follow(run_id, show, timeout_s=timeout)
    if final.report:
        print_markdown(final.report)
    colour = "green" if final.state == "COMPLETED" else "red"
    console.print(f"[{colour}]Run {final.name}: {final.state_name}[/] {final.message}")
    return final
