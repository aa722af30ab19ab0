"""The platform: start, watch and stop the servers; the demo; the long-running roles."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from refit.cli.common import (
    console,
    fail,
    follow_run,
    follow_submission,
    load_settings,
    registry_call,
    registry_of,
)

if TYPE_CHECKING:
    from core.settings import Settings


app = typer.Typer()


def _start(settings: Settings, role: str):
    """Start a role's servers in the background; print each as it answers."""
    from core.settings import apply_tool_environment
    from refit import platform, services

    if role == "up":
        settings.ensure_platform_secrets()  # before any server or client needs them
    apply_tool_environment(settings)
    with console.status("Starting servers…") as spinner:

        def ready(service: services.Service) -> None:
            console.print(f"[green]✓[/] {service.title} answers at {service.url}")
            spinner.update("Waiting for the other servers…")

        try:
            results = platform.up(settings, on_ready=ready, role=role)
        except platform.PlatformError as exc:
            raise fail(str(exc)) from exc
    for result in results:
        if not result.started:
            console.print(
                f"[yellow]•[/] {result.service.title} is already running "
                f"(pid {result.pid}) at {result.service.url}"
            )
    return results


@app.command()
def up() -> None:
    """Start the platform in the background: MLflow, Prefect and serving (each unless the
    settings point at a shared one), a worker of the work pool and the drop-folder watcher."""
    settings = load_settings()
    _start(settings, "up")
    token, created = settings.ensure_admin_token()
    ui = settings.mlflow_tracking_uri if not settings.local_mlflow else settings.mlflow_url
    prefect_ui = settings.prefect_api_url.removesuffix("/api") if settings.prefect_api_url else ""
    page = settings.public_serving_url
    console.print(
        f"\nMLflow UI:    {ui}\nPrefect UI:   {prefect_ui}"
        f"\nConsole:      {page}/  (sign in with the admin token)"
        f"\nTry page:     {page}/try\nAPI docs:     {page}/docs"
    )
    note = "new, kept in" if created else "from"
    console.print(f"Admin token:  {token}  ({note} {settings.token_file})", highlight=False)
    for name, login, file in (
        ("Prefect", settings.prefect_auth_string(), settings.prefect_auth_file),
        ("MLflow", settings.mlflow_auth_string(), settings.mlflow_auth_file),
    ):
        if login:
            console.print(f"{name} login: {login}  (in {file})", highlight=False)
    console.print(f"Logs in {settings.log_dir}. Stop everything with [bold]refit down[/].")


@app.command()
def demo() -> None:
    """The whole story: start the platform, make the built-in model champion, submit the
    embedded batch that brings `truck`, follow the run, ask the endpoint, print a summary."""
    import httpx

    from core import runs

    settings = load_settings()
    up()
    from core.contract import CHAMPION

    champion = registry_call(lambda: registry_of(settings).alias_version(CHAMPION))
    if champion is None:
        console.print("\n[bold]1. The built-in model becomes the first champion[/]")
        if follow_run(runs.start("bootstrap/bootstrap"), 1800).state != "COMPLETED":
            raise fail("the bootstrap run failed; see the Prefect UI")
    else:
        console.print(f"\n1. Champion v{champion} already serves")
    sample = settings.workspace / "sample"
    if not (sample / "incoming").is_dir():
        from pipelines.data.sample import unpack_sample

        unpack_sample(settings.sample_archive, sample)
    incoming = sample / "incoming"
    console.print(f"\n[bold]2. Submitting the embedded batch {incoming}[/]")
    from pipelines.data.submissions import Queue

    submission = Queue.of(settings).submit(incoming)
    final = follow_submission(settings, submission.id, 3600)
    truck = min((sample / "seed" / "holdout" / "truck").iterdir())  # never trained on
    with truck.open("rb") as image:
        answer = httpx.post(f"{settings.serving_url}/predict", files={"image": image}, timeout=60)
    console.print(f"\n[bold]3. The endpoint on {truck.name} (a truck)[/]: {answer.json()}")
    token, _ = settings.ensure_admin_token()
    console.print(
        f"\n[bold]Summary[/]: run {final.state_name}. Decision and numbers above.\n"
        f"Prefect UI:   {settings.prefect_url}\nMLflow UI:    {settings.mlflow_url}\n"
        f"Console:      {settings.serving_url}/\nTry page:     {settings.serving_url}/try\n"
        f"Admin token:  {token}\nThe platform keeps running; stop it with [bold]refit down[/]."
    )


@app.command()
def serve() -> None:
    """Run the serving server in the foreground (Ctrl+C stops it); needs a champion."""
    from core.contract import CHAMPION
    from refit import services

    settings = load_settings()
    try:
        version = registry_of(settings).alias_version(CHAMPION)
    except Exception as exc:
        raise fail(f"cannot read the registry at {settings.mlflow_tracking_uri}: {exc}") from exc
    if version is None:
        raise fail(
            f"no champion: {settings.registered_model_name!r} has no version with alias "
            "'champion'. Register one first (refit model register models/builtin/model.keras)."
        )
    token, _ = settings.ensure_admin_token()
    console.print(f"Serving champion v{version} at {settings.serving_url} (admin token {token})")
    service = services.serving_service(settings)
    os.execve(service.command[0], service.command, {**os.environ, **service.env})


@app.command()
def worker(
    foreground: Annotated[
        bool, typer.Option(help="Run in the foreground (a container's main process).")
    ] = False,
) -> None:
    """Join the work pool from this host: a worker that runs one flow at a time with this
    host's settings (the team's Prefect, MLflow and store). Stop it with `refit down`."""
    settings = load_settings()
    if foreground:
        import os

        from refit import services

        (service,) = services.services(settings, "worker")
        settings.ensure_workspace()
        os.execve(service.command[0], service.command, {**os.environ, **service.env})
    _start(settings, "worker")
    console.print(
        f"Worker of pool {settings.orchestration.work_pool} on {settings.prefect_api_url}; "
        f"logs in {settings.log_dir}."
    )


@app.command()
def deploy() -> None:
    """Register the work pool, the locks and the deployments on the Prefect server (what
    `refit up` does first; run it once for a team, and after changing the schedule)."""
    settings = load_settings()
    from flows.deployments import deploy as register

    try:
        names = register(settings)
    except Exception as exc:
        raise fail(f"cannot register on {settings.prefect_api_url}: {exc}") from exc
    for name in names:
        console.print(f"[green]✓[/] {name} on pool {settings.orchestration.work_pool}")


@app.command()
def down() -> None:
    """Stop the servers `refit up` started."""
    from refit import platform

    settings = load_settings()
    with console.status("Stopping servers…"):
        results = platform.down(settings)
    for result in results:
        if result.was in (platform.State.HEALTHY, platform.State.UNHEALTHY):
            console.print(f"[green]✓[/] stopped {result.service.title} (pid {result.pid})")
        elif result.was is platform.State.ORPHANED:
            console.print(f"[green]✓[/] stopped the workers {result.service.title} left behind")
        elif result.was is platform.State.STALE:
            console.print(f"[yellow]•[/] removed a stale pid file of {result.service.title}")
        else:
            console.print(f"  {result.service.title} was not running")


@app.command()
def status() -> None:
    """Show which servers run, where, and whether they answer."""
    from refit import platform

    settings = load_settings()
    table = Table("server", "state", "pid", "url")
    colours = {
        platform.State.HEALTHY: "green",
        platform.State.UNHEALTHY: "red",
        platform.State.ORPHANED: "red",
    }
    states = platform.status(settings)
    for current in states:
        colour = colours.get(current.state, "dim")
        table.add_row(
            current.service.title,
            f"[{colour}]{current.state}[/]",
            str(current.pid or ""),
            current.service.url,
        )
    console.print(table)
    shared = platform.shared_checks(settings)
    if shared:
        remote = Table("shared server", "state", "url")
        for check in shared:
            state = "[green]answers[/]" if check.ok else f"[red]not answering[/] {check.detail}"
            remote.add_row(check.what, state, check.where)
        console.print(remote)
    prefect_up = any(
        c.service.name == "prefect" and c.state is platform.State.HEALTHY for c in states
    ) or any(c.what.startswith("Prefect") and c.ok for c in shared)
    _print_queue(settings, prefect_up)


def _print_queue(settings: Settings, prefect_up: bool) -> None:
    """Submissions still queued (a stuck one shows here) and retrain runs that crashed."""
    from core import runs
    from pipelines.data.submissions import Queue

    try:
        queued = Queue.of(settings).pending()
    except Exception as exc:
        console.print(f"[red]•[/] cannot read the submission queue: {exc}")
        queued = []
    if queued:
        table = Table("submission", "state", "submitted", "batch")
        for sub in queued:
            table.add_row(sub.id, sub.status, sub.submitted_at, sub.batch_id or "")
        console.print(table)
    if not prefect_up:
        return
    try:
        broken = runs.recent_failures()
    except Exception as exc:
        console.print(f"[yellow]•[/] cannot read the retrain runs from Prefect: {exc}")
        return
    waiting = {sub.id for sub in queued}
    for run in broken:
        line = f"retrain run {run.name} ended {run.state_name}: {run.message}"
        if run.submissions and not waiting & set(run.submissions):  # retried and finished
            console.print(f"[dim]• {line} (its submission was finished since)[/]")
        else:
            console.print(f"[red]•[/] {line}")
