"""The `refit` command line: one command per user action, each a thin call into a room.

Heavy libraries (TensorFlow, MLflow, Prefect, GX, DVC) are imported inside the commands
that need them, so `refit --help` answers at once.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer(
    help="Refit keeps image classifiers up to date: validate batches, fine-tune, gate, serve.",
    no_args_is_help=True,
    add_completion=False,
)
sample_app = typer.Typer(help="The embedded CIFAR-10 sample.", no_args_is_help=True)
app.add_typer(sample_app, name="sample")
data_app = typer.Typer(
    help="Check, add and version batches of labelled images.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train models: from scratch, or fine-tune.", no_args_is_help=True)
app.add_typer(train_app, name="train")
model_app = typer.Typer(help="Import and manage models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
label_app = typer.Typer(
    help="Choose the logged production images worth labelling next.", no_args_is_help=True
)
app.add_typer(label_app, name="label")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the libraries' own log lines and warnings.")
    ] = False,
) -> None:
    if verbose:
        os.environ["REFIT_VERBOSE"] = "1"


def _settings(tensorflow: bool = False) -> Settings:
    """Load the settings (exporting the tool environment before any heavy import); with
    ``tensorflow``, load it now, keeping its start-up lines off the terminal."""
    from pydantic import ValidationError

    from core.settings import config_file, get_settings
    from refit import quiet

    try:
        settings = get_settings()
    except ValidationError as exc:
        raise _fail(_bad_settings(exc, config_file())) from None
    if not settings.verbose:
        quiet.quiet_libraries()
        if tensorflow:
            quiet.load_tensorflow_quietly()
    return settings


def _bad_settings(exc, path: Path) -> str:
    """Each rule the settings broke, named as a setting and as its REFIT_* variable."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        variable = "REFIT_" + "__".join(str(part) for part in error["loc"]).upper()
        rule = "not a setting" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {key} ({variable}): {rule}")
    return f"the settings (from REFIT_* variables and {path}) are invalid:\n" + "\n".join(lines)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=1)


def _start(settings: Settings, role: str):
    """Start a role's servers in the background; print each as it answers."""
    from core.settings import apply_tool_environment
    from refit import platform

    if role == "up":
        settings.ensure_platform_secrets()  # before any server or client needs them
    apply_tool_environment(settings)
    with console.status("Starting servers…") as spinner:

        def ready(service: platform.Service) -> None:
            console.print(f"[green]✓[/] {service.title} answers at {service.url}")
            spinner.update("Waiting for the other servers…")

        try:
            results = platform.up(settings, on_ready=ready, role=role)
        except platform.PlatformError as exc:
            raise _fail(str(exc)) from exc
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
    settings = _settings()
    _start(settings, "up")
    token, created = settings.ensure_admin_token()
    ui = settings.mlflow_tracking_uri if not settings.local_mlflow else settings.mlflow_url
    prefect_ui = settings.prefect_api_url.removesuffix("/api") if settings.prefect_api_url else ""
    page = settings.public_serving_url
    console.print(
        f"\nMLflow UI:    {ui}\nPrefect UI:   {prefect_ui}"
        f"\nTry page:     {page}/try\nRetrain page: {page}/retrain"
        f"\nAPI docs:     {page}/docs"
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

    settings = _settings()
    up()
    from core.contract import CHAMPION

    champion = _registry_call(lambda: _registry(settings).alias_version(CHAMPION))
    if champion is None:
        console.print("\n[bold]1. The built-in model becomes the first champion[/]")
        if _follow_run(runs.start("bootstrap/bootstrap"), 1800).state != "COMPLETED":
            raise _fail("the bootstrap run failed; see the Prefect UI")
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
    final = _follow_submission(settings, submission.id, 3600)
    truck = min((sample / "seed" / "holdout" / "truck").iterdir())  # never trained on
    with truck.open("rb") as image:
        answer = httpx.post(f"{settings.serving_url}/predict", files={"image": image}, timeout=60)
    console.print(f"\n[bold]3. The endpoint on {truck.name} (a truck)[/]: {answer.json()}")
    token, _ = settings.ensure_admin_token()
    console.print(
        f"\n[bold]Summary[/]: run {final.state_name}. Decision and numbers above.\n"
        f"Prefect UI:   {settings.prefect_url}\nMLflow UI:    {settings.mlflow_url}\n"
        f"Try page:     {settings.serving_url}/try\nRetrain page: {settings.serving_url}/retrain\n"
        f"Admin token:  {token}\nThe platform keeps running; stop it with [bold]refit down[/]."
    )


@app.command()
def serve() -> None:
    """Run the serving server in the foreground (Ctrl+C stops it); needs a champion."""
    from core.contract import CHAMPION
    from refit import platform

    settings = _settings()
    try:
        version = _registry(settings).alias_version(CHAMPION)
    except Exception as exc:
        raise _fail(f"cannot read the registry at {settings.mlflow_tracking_uri}: {exc}") from exc
    if version is None:
        raise _fail(
            f"no champion: {settings.registered_model_name!r} has no version with alias "
            "'champion'. Register one first (refit model register models/builtin/model.keras)."
        )
    token, _ = settings.ensure_admin_token()
    console.print(f"Serving champion v{version} at {settings.serving_url} (admin token {token})")
    service = platform.serving_service(settings)
    os.execve(service.command[0], service.command, {**os.environ, **service.env})


@app.command()
def worker(
    foreground: Annotated[
        bool, typer.Option(help="Run in the foreground (a container's main process).")
    ] = False,
) -> None:
    """Join the work pool from this host: a worker that runs one flow at a time with this
    host's settings (the team's Prefect, MLflow and store). Stop it with `refit down`."""
    settings = _settings()
    if foreground:
        import os

        from refit import platform

        (service,) = platform.services(settings, "worker")
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
    settings = _settings()
    from flows.deployments import deploy as register

    try:
        names = register(settings)
    except Exception as exc:
        raise _fail(f"cannot register on {settings.prefect_api_url}: {exc}") from exc
    for name in names:
        console.print(f"[green]✓[/] {name} on pool {settings.orchestration.work_pool}")


@app.command()
def down() -> None:
    """Stop the servers `refit up` started."""
    from refit import platform

    settings = _settings()
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

    settings = _settings()
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


@sample_app.command("unpack")
def sample_unpack(dest: Annotated[Path, typer.Argument(help="Directory to unpack into.")]) -> None:
    """Unpack the embedded sample (seed dataset, holdout, incoming batch) into DEST."""
    from pipelines.data.sample import unpack_sample

    settings = _settings()
    try:
        counts = unpack_sample(settings.sample_archive, dest)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    for part, per_class in counts.items():
        console.print(f"{dest / part}: {sum(per_class.values())} images, {len(per_class)} classes")


@sample_app.command("cut")
def sample_cut() -> None:
    """Re-cut the embedded sample from the full CIFAR-10 tarball (for maintainers)."""
    from pipelines.data.sample import cut_sample

    settings = _settings()
    with console.status(f"Cutting the sample from {settings.cifar10_archive}…"):
        try:
            counts = cut_sample(
                settings.cifar10_archive, settings.sample_archive, settings.sample_seed
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from exc
    console.print(
        f"Wrote {settings.sample_archive}: "
        + ", ".join(f"{part} {n}" for part, n in sorted(counts.items()))
    )


# --------------------------------------------------------------------------- data

BatchArg = Annotated[
    Path, typer.Argument(help="A zip/tar/tar.gz, a folder, or a CSV of image paths and labels.")
]


def _print_report(report) -> None:
    colour = "green" if report.passed else "red"
    console.print(f"[{colour}]{report.summary()}[/]", highlight=False)


@data_app.command("validate")
def data_validate(batch: BatchArg) -> None:
    """Check a batch against the current dataset and report; changes nothing."""
    settings = _settings()
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
    settings = _settings()
    from pipelines import workspace
    from pipelines.data.versions import DvcError

    with console.status("Adding…") as spinner:
        try:
            result = workspace.add_batch(settings, batch, progress=spinner.update)
        except DvcError as exc:
            raise _fail(f"{exc}\nThe dataset was left as it was.") from exc
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
    settings = _settings()
    from core.objectstore import StoreError
    from pipelines.data.submissions import Queue

    try:
        submission = Queue.of(settings).submit(batch)
    except (FileNotFoundError, StoreError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"Submitted [bold]{submission.id}[/]; the retrain flow will pick it up.")
    if follow:
        final = _follow_submission(settings, submission.id, timeout)
        if final.state != "COMPLETED":
            raise typer.Exit(code=1)


def _follow_submission(settings: Settings, submission_id: str, timeout: float):
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
                raise _fail(
                    "no retrain run took the submission; check `refit status` and the worker "
                    f"log in {settings.log_dir}. The batch stays queued in {settings.store_url}."
                )
            time.sleep(2)
    console.print(f"Flow run: {settings.prefect_url}/runs/flow-run/{run_id}")
    return _follow_run(run_id, timeout)


def _follow_run(run_id: str, timeout: float):
    from rich.markdown import Markdown

    from core import runs

    shown: set[tuple[str, str]] = set()

    def show(current) -> None:
        for step in current.steps:
            if (step["name"], step["state"]) not in shown:
                shown.add((step["name"], step["state"]))
                console.print(f"  {step['name']}: {step['state']}")

    final = runs.follow(run_id, show, timeout_s=timeout)
    if final.report:
        console.print(Markdown(final.report))
    colour = "green" if final.state == "COMPLETED" else "red"
    console.print(f"[{colour}]Run {final.name}: {final.state_name}[/] {final.message}")
    return final


@data_app.command("remove-class")
def data_remove_class(
    label: Annotated[str, typer.Argument(help="The class to take out of the dataset.")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the new version).")],
) -> None:
    """Take a class that should not have been merged out of the dataset, as a new recorded
    version (earlier versions keep it; the champion's head is not changed)."""
    settings = _settings()
    from pipelines import workspace
    from pipelines.data.versions import DvcError

    with console.status(f"Removing {label}…") as spinner:
        try:
            version = workspace.remove_class(settings, label, reason, progress=spinner.update)
        except (ValueError, DvcError) as exc:
            raise _fail(f"{exc}\nThe dataset was left as it was.") from exc
    console.print(f"Removed {label!r}. Dataset version [bold]{version.version}[/]")


@data_app.command("versions")
def data_versions() -> None:
    """List the recorded dataset versions (the current one is marked)."""
    settings = _settings()
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
    settings = _settings()
    from pipelines.data.versions import DvcError
    from pipelines.workspace import store

    with console.status(f"Restoring {version}…"):
        try:
            record = store(settings).checkout(version)
        except DvcError as exc:
            raise _fail(str(exc)) from exc
    console.print(f"Dataset is now version {record.version} (from {record.batch_id}).")


# --------------------------------------------------------------------------- train

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


def _model_out(settings: Settings, out: Path | None, recipe: str) -> Path:
    """Where a trained model goes: ``out``, or a timestamped file in the workspace."""
    import time

    return out or settings.workspace / "models" / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}.keras"


def _save(loaded, out: Path) -> None:
    from pipelines.training.scratch import save_with_card

    save_with_card(loaded, out)
    console.print(f"Saved {out} and its card {out.with_suffix('.md')}")


@train_app.command("bootstrap")
def train_bootstrap(
    source: SourceOpt = None,
    exclude_class: Annotated[list[str], typer.Option(help="Leave this class out.")] = [],  # noqa: B006
    exclude_sample: ExcludeSampleOpt = False,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    out: ModelOut = None,
) -> None:
    """Train a model from scratch and save it with its class names and a model card."""
    import sys
    import time

    settings = _settings(tensorflow=True)
    from pipelines import workspace
    from pipelines.data.sample import sample_hashes
    from pipelines.training import scratch

    started = time.monotonic()
    config = settings.train.model_copy(update={"epochs": epochs} if epochs else {})
    size = (settings.architecture.input_size,) * 2
    excluded = set(exclude_class)
    dataset = workspace.dataset(settings)
    holdout = None
    try:
        if source is None:
            images, card = scratch.dataset_images(dataset, "train", size, excluded)
            holdout = lambda names: (  # noqa: E731
                scratch.dataset_images(dataset, "holdout", size, excluded, names)[0],
                "holdout (dataset)",
            )
        else:
            hashes = sample_hashes(settings.sample_archive) if exclude_sample else set()
            images, card = scratch.source_images(
                source, settings.staging_dir, settings.ingest, size, excluded, hashes, console.print
            )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if exclude_sample:
        holdout = lambda names: (  # noqa: E731
            scratch.sample_holdout(settings.sample_archive, names, size),
            "holdout (embedded sample)",
        )
    loaded = scratch.train_from_scratch(
        images, settings.architecture, config, card, holdout, console.print
    )
    loaded.card["wall_time_s"] = round(time.monotonic() - started, 1)
    loaded.card["command"] = "refit " + " ".join(sys.argv[1:])
    _save(loaded, _model_out(settings, out, "bootstrap"))


@train_app.command("finetune")
def train_finetune(
    model: ParentOpt = None,
    batch_id: BatchIdOpt = None,
    register: RegisterOpt = True,
    out: ModelOut = None,
) -> None:
    """Fine-tune on a merged batch with replay (growing the head for new classes), then
    judge the challenger against the champion and promote it only if the gate blesses it."""
    settings = _settings(tensorflow=True)
    from pipelines import workspace
    from pipelines.judge import candidate
    from pipelines.training.finetune import NotTrainable, finetune_on_batch

    versions = workspace.store(settings).versions()
    batch_id = batch_id or (versions[-1].batch_id if versions else None)
    dataset = workspace.dataset(settings)
    if batch_id is None or dataset.empty:
        raise _fail("no dataset yet: add a batch with `refit data add` first")
    registry = workspace.registry(settings)
    parent = _parent_model(registry, model)
    try:
        challenger, fits = finetune_on_batch(
            parent.model, dataset, batch_id, settings.finetune, progress=console.print
        )
    except NotTrainable as exc:
        raise _fail(str(exc)) from exc
    holdout = dataset.holdout_images(parent.model.input_size, challenger.class_names)
    assessment = candidate.assess(challenger, holdout, settings.gate, parent)
    for key, value in assessment.summary().items():
        console.print(f"  {key}: {value}")
    challenger.card["holdout"] = assessment.summary()
    _save(challenger, _model_out(settings, out, "finetune"))
    if register:
        _register_finetuned(settings, registry, parent, challenger, fits, assessment, dataset)


def _register_finetuned(settings, registry, parent, challenger, fits, assessment, dataset):
    """Judge a fine-tuned challenger against the registry's champion (the assessment made
    against its parent, when the parent was the champion); register; promote if blessed."""
    from core.contract import PARENT_TAG
    from pipelines.judge import candidate

    with console.status("Judging against the champion…"):
        if parent.version is None:  # fine-tuned from a file
            champion = _registry_call(lambda: candidate.current_champion(registry))
            assessment = candidate.assess(challenger, assessment.holdout, settings.gate, champion)
        run = candidate.finetune_run(
            parent.model, challenger, fits, settings.finetune, settings.accepted_dir
        )
        if parent.version is None:
            run.tags[PARENT_TAG] = "a model file"  # lineage names the real parent
        outcome = _registry_call(
            lambda: candidate.record(assessment, challenger, registry, run, dataset)
        )
    _print_judgement(outcome)


def _parent_model(registry, model: Path | None):
    """What to fine-tune: a model file, or the registry's champion (downloaded once)."""
    from pipelines.judge.candidate import Baseline, current_champion
    from pipelines.models.modelfile import ModelRefused, load_refit_model

    try:
        if model is not None:
            return Baseline(load_refit_model(model))
        champion = _registry_call(lambda: current_champion(registry))
    except (ModelRefused, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if champion is None:
        raise _fail(
            f"{registry.name} has no version with alias 'champion'; register one first "
            "(refit model register models/builtin/model.keras)"
        )
    return champion


def _print_judgement(outcome) -> None:
    console.print(outcome.decision.markdown(), highlight=False)
    if outcome.note:
        console.print(f"[yellow]{outcome.note}[/]", highlight=False)
    state = "promoted to champion" if outcome.promoted else "registered, champion unchanged"
    console.print(f"Version {outcome.version}: {state}.")


# --------------------------------------------------------------------------- model


@model_app.command("import")
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
    settings = _settings(tensorflow=True)
    from pipelines.models.modelfile import ModelRefused, save_model
    from pipelines.training.imports import import_user_model

    names = [c for c in classes.split(",")] if classes else None
    try:
        imported = import_user_model(
            file, names, labels, pixels, calibrate, settings.ingest, progress=console.print
        )
    except ModelRefused as exc:
        raise _fail(str(exc)) from exc
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


def _registry(settings: Settings):
    """The model registry (its module loads TensorFlow: quietly, unless --verbose)."""
    from pipelines.workspace import registry
    from refit import quiet

    if not settings.verbose:
        quiet.load_tensorflow_quietly()
    return registry(settings)


def _registry_call(fn):
    """Run a registry action, turning its errors into a clear message and exit code 1."""
    from pipelines.judge.registry import RegistryError

    try:
        return fn()
    except RegistryError as exc:
        raise _fail(str(exc)) from exc


@model_app.command("register")
def model_register(
    file: Annotated[Path, typer.Argument(help="A Refit model file (.keras).")],
    reason: Annotated[str, typer.Option(help="Why this model is a candidate.")] = "registered",
) -> None:
    """Judge a model file against the champion on the dataset holdout; promote if blessed."""
    settings = _settings(tensorflow=True)
    from pipelines import workspace
    from pipelines.judge.candidate import judge_model_file
    from pipelines.judge.evaluate import EvaluationError
    from pipelines.judge.registry import CandidateRun
    from pipelines.models.modelfile import ModelRefused, load_refit_model

    try:
        challenger = load_refit_model(file)
    except (ModelRefused, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    run = CandidateRun(f"register {file.name}", tags={"reason": reason})
    with console.status("Evaluating, registering…"):
        try:
            outcome = _registry_call(
                lambda: judge_model_file(
                    challenger,
                    workspace.dataset(settings),
                    workspace.registry(settings),
                    settings.gate,
                    run,
                )
            )
        except EvaluationError as exc:
            raise _fail(str(exc)) from exc
    _print_judgement(outcome)


@model_app.command("list")
def model_list() -> None:
    """Registered versions with aliases, holdout accuracy and dataset version."""
    settings = _settings()
    rows = _registry_call(lambda: _registry(settings).versions())
    table = Table("version", "aliases", "created", "accuracy", "gate", "dataset", "classes")
    for row in rows:
        accuracy = f"{row.accuracy:.4f}" if row.accuracy is not None else ""
        table.add_row(
            row.version,
            ", ".join(row.aliases),
            row.created,
            accuracy,
            row.decision or "",
            (row.dataset_version or "")[:12],
            str(len(row.class_names)),
        )
    console.print(table)


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
) -> None:
    """Make a version the champion by hand (recorded; bypasses the gate)."""
    settings = _settings()
    _registry_call(lambda: _registry(settings).promote(version, reason, action="manual promote"))
    console.print(f"Version {version} is now the champion.")


@model_app.command("rollback")
def model_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
    to: Annotated[
        str | None, typer.Option(help="Version to go back to (default: previous).")
    ] = None,
) -> None:
    """Move the champion back to the previous version (or to --to)."""
    settings = _settings()
    target = _registry_call(lambda: _registry(settings).rollback(reason, to))
    console.print(f"Rolled back: version {target} is the champion again.")


@model_app.command("history")
def model_history() -> None:
    """Every alias move: who, what, why, when."""
    settings = _settings()
    table = Table("when", "who", "action", "version", "from", "reason")
    for entry in _registry_call(lambda: _registry(settings).history()):
        table.add_row(
            entry["when"],
            entry["who"],
            entry["action"],
            entry["version"],
            str(entry.get("from_version") or ""),
            entry["reason"],
        )
    console.print(table)


@model_app.command("export")
def model_export(
    out: Annotated[Path, typer.Option(help="File to write: .keras, or .h5 for older tools.")],
    alias: Annotated[str, typer.Option(help="Alias to export.")] = "champion",
    version: Annotated[str | None, typer.Option(help="Export this version instead.")] = None,
) -> None:
    """Download a registered model as a file (class names inside)."""
    settings = _settings(tensorflow=True)
    path = _registry_call(lambda: _registry(settings).export(version or alias, out))
    console.print(f"Wrote {path}")


# --------------------------------------------------------------------------- the loop


@app.command()
def drift() -> None:
    """Check the live prediction log for drift from the champion's training images now
    (the `drift` deployment does it on a schedule); logged to MLflow."""
    settings = _settings()
    from pipelines.loop import monitor

    with console.status("Checking the prediction log…"):
        check = _registry_call(
            lambda: monitor.check_live(
                _registry(settings),
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
    settings = _settings()
    from core.contract import CHAMPION
    from pipelines import workspace
    from pipelines.loop import labelqueue
    from pipelines.loop.features import TrainingFeatures

    registry = _registry(settings)
    version = _registry_call(lambda: registry.alias_version(CHAMPION))
    data = _registry_call(lambda: registry.training_features(version)) if version else None
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
        raise _fail(
            f"nothing to label: the prediction log holds {len(view)} images, none unlabelled"
        )
    try:
        path, written, gone = labelqueue.export(items, store, out)
    except FileExistsError as exc:
        raise _fail(str(exc)) from exc
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
