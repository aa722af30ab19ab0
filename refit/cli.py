"""The `refit` command line: one command per user action, each a thin call into a room.

Heavy libraries (TensorFlow, MLflow, Prefect, GX, DVC) are imported inside the commands
that need them, so `refit --help` answers at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from refit.settings import Settings

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

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    """Load the settings and export the tool environment before any heavy import."""
    from refit.settings import apply_tool_environment, get_settings

    settings = get_settings()
    apply_tool_environment(settings)
    return settings


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=1)


@app.command()
def up() -> None:
    """Start the local platform in the background: MLflow, Prefect and the serving server."""
    from refit import platform

    settings = _settings()
    with console.status("Starting servers…") as spinner:

        def ready(service: platform.Service) -> None:
            console.print(f"[green]✓[/] {service.title} answers at {service.url}")
            spinner.update("Waiting for the other servers…")

        try:
            results = platform.up(settings, on_ready=ready)
        except platform.PlatformError as exc:
            raise _fail(str(exc)) from exc
    for result in results:
        if not result.started:
            console.print(
                f"[yellow]•[/] {result.service.title} is already running "
                f"(pid {result.pid}) at {result.service.url}"
            )
    token, created = settings.ensure_admin_token()
    console.print(
        f"\nMLflow UI:    {settings.mlflow_url}\nPrefect UI:   {settings.prefect_url}"
        f"\nTry page:     {settings.serving_url}/try\nRetrain page: {settings.serving_url}/retrain"
        f"\nAPI docs:     {settings.serving_url}/docs"
    )
    note = "new, kept in" if created else "from"
    console.print(f"Admin token:  {token}  ({note} {settings.token_file})", highlight=False)
    console.print(f"Logs in {settings.log_dir}. Stop everything with [bold]refit down[/].")


@app.command()
def demo() -> None:
    """The whole story: start the platform, make the built-in model champion, submit the
    embedded batch that brings `truck`, follow the run, ask the endpoint, print a summary."""
    import httpx

    from refit import runs

    settings = _settings()
    up()
    from serving.champion import RegistrySource

    source = RegistrySource.from_settings(settings)
    if source.champion_version() is None:
        console.print("\n[bold]1. The built-in model becomes the first champion[/]")
        if _follow_run(runs.start("bootstrap/bootstrap"), 1800).state != "COMPLETED":
            raise _fail("the bootstrap run failed; see the Prefect UI")
    else:
        console.print(f"\n1. Champion v{source.champion_version()} already serves")
    sample = settings.workspace / "sample"
    if not (sample / "incoming").is_dir():
        from pipelines.sample import unpack_sample

        unpack_sample(settings.sample_archive, sample)
    incoming = sample / "incoming"
    console.print(f"\n[bold]2. Submitting the embedded batch {incoming}[/]")
    from pipelines.submissions import submit

    submission = submit(incoming, settings.incoming_dir)
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
    from refit import platform
    from serving.champion import RegistrySource

    settings = _settings()
    source = RegistrySource.from_settings(settings)
    try:
        version = source.champion_version()
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
def down() -> None:
    """Stop the servers `refit up` started."""
    from refit import platform

    settings = _settings()
    with console.status("Stopping servers…"):
        results = platform.down(settings)
    for result in results:
        if result.was in (platform.State.HEALTHY, platform.State.UNHEALTHY):
            console.print(f"[green]✓[/] stopped {result.service.title} (pid {result.pid})")
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
    colours = {platform.State.HEALTHY: "green", platform.State.UNHEALTHY: "red"}
    for current in platform.status(settings):
        colour = colours.get(current.state, "dim")
        table.add_row(
            current.service.title,
            f"[{colour}]{current.state}[/]",
            str(current.pid or ""),
            current.service.url,
        )
    console.print(table)


@sample_app.command("unpack")
def sample_unpack(dest: Annotated[Path, typer.Argument(help="Directory to unpack into.")]) -> None:
    """Unpack the embedded sample (seed dataset, holdout, incoming batch) into DEST."""
    from pipelines.sample import unpack_sample

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
    from pipelines.sample import cut_sample

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


def _intake(settings: Settings):
    from refit.wiring import intake

    return intake(settings)


def _print_report(report) -> None:
    colour = "green" if report.passed else "red"
    console.print(f"[{colour}]{report.summary()}[/]", highlight=False)


@data_app.command("validate")
def data_validate(batch: BatchArg) -> None:
    """Check a batch against the current dataset and report; changes nothing."""
    settings = _settings()
    from pipelines.intake import check_batch, discard

    _, paths = _intake(settings)
    with console.status("Checking…") as spinner:
        checked = check_batch(
            batch,
            settings.dataset_dir,
            paths,
            settings.ingest,
            settings.validation,
            progress=spinner.update,
        )
    discard(checked)
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
    from pipelines.intake import add_batch
    from pipelines.versions import DvcError

    store, paths = _intake(settings)
    with console.status("Adding…") as spinner:
        try:
            result = add_batch(
                batch,
                store,
                paths,
                settings.ingest,
                settings.validation,
                settings.split,
                progress=spinner.update,
            )
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
    from pipelines.submissions import submit

    try:
        submission = submit(batch, settings.incoming_dir)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"Submitted [bold]{submission.id}[/]; the retrain flow will pick it up.")
    if follow:
        final = _follow_submission(settings, submission.id, timeout)
        if final.state != "COMPLETED":
            raise typer.Exit(code=1)


def _follow_submission(settings: Settings, submission_id: str, timeout: float):
    """Wait for the run that takes a submission, print its steps and its report."""
    import time

    from refit import runs

    deadline = time.monotonic() + min(timeout, 300)
    with console.status("Waiting for the retrain run to start (is `refit up` running?)…"):
        while (run_id := runs.find_submission_run(submission_id)) is None:
            if time.monotonic() > deadline:
                raise _fail(
                    "no retrain run took the submission; check `refit status` and the runner "
                    f"log in {settings.log_dir}. The batch stays queued in {settings.incoming_dir}."
                )
            time.sleep(2)
    console.print(f"Flow run: {settings.prefect_url}/runs/flow-run/{run_id}")
    return _follow_run(run_id, timeout)


def _follow_run(run_id: str, timeout: float):
    from rich.markdown import Markdown

    from refit import runs

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


@data_app.command("versions")
def data_versions() -> None:
    """List the recorded dataset versions (the current one is marked)."""
    settings = _settings()
    store, _ = _intake(settings)
    current = store.current_version()
    table = Table("", "version", "created", "batch", "train", "holdout", "classes")
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
        )
    console.print(table)


@data_app.command("checkout")
def data_checkout(
    version: Annotated[str, typer.Argument(help="A version id (a unique prefix is enough).")],
) -> None:
    """Restore the dataset directory to a recorded version."""
    settings = _settings()
    from pipelines.versions import DvcError

    store, _ = _intake(settings)
    with console.status(f"Restoring {version}…"):
        try:
            record = store.checkout(version)
        except DvcError as exc:
            raise _fail(str(exc)) from exc
    console.print(f"Dataset is now version {record.version} (from {record.batch_id}).")


# --------------------------------------------------------------------------- train


def _sample_holdout(settings: Settings, class_names: list[str]):
    """The embedded sample's holdout images of ``class_names``, decoded."""
    import tempfile

    from pipelines.sample import unpack_sample
    from pipelines.train import load_images

    with tempfile.TemporaryDirectory() as tmp:
        unpack_sample(settings.sample_archive, Path(tmp))
        root = Path(tmp) / "seed" / "holdout"
        paths = [
            p for c in class_names if (root / c).is_dir() for p in sorted((root / c).iterdir())
        ]
        labels = [p.parent.name for p in paths]
        size = (settings.architecture.input_size, settings.architecture.input_size)
        return load_images(paths, labels, class_names, size)


def _source_images(
    settings: Settings, source: Path, exclude_classes: set[str], exclude_sample: bool, progress
):
    """Decoded training images of a batch-shaped source, minus the excluded ones."""
    import hashlib
    import shutil

    from pipelines.ingest import build_manifest, new_batch_id, stage_batch
    from pipelines.sample import sample_hashes
    from pipelines.train import images_from_manifest

    progress(f"Reading {source}")
    staged = stage_batch(source, settings.staging_dir, settings.ingest, new_batch_id())
    try:
        manifest = build_manifest(staged, settings.ingest)
        excluded = sample_hashes(settings.sample_archive) if exclude_sample else set()
        size = (settings.architecture.input_size, settings.architecture.input_size)
        progress(f"Decoding {len(manifest)} images")
        images = images_from_manifest(staged.files_dir, manifest, size, exclude_classes, excluded)
        used = manifest[
            manifest["decodable"]
            & ~manifest["label"].isin(exclude_classes)
            & ~manifest["sha256"].isin(excluded)
        ]
        digest = hashlib.sha256("\n".join(sorted(used["sha256"])).encode()).hexdigest()
    finally:
        shutil.rmtree(staged.root, ignore_errors=True)
    return images, {
        "source": str(source),
        "images_digest": digest,
        "excluded_sample_images": len(excluded),
    }


def _dataset_images(
    settings: Settings, split: str, exclude_classes: set[str], class_names: list[str] | None = None
):
    """Decoded images of one split of the current dataset, and a data card."""
    from pipelines.dataset import load_index
    from pipelines.train import images_from_index

    index = load_index(settings.dataset_dir)
    rows = index[(index["split"] == split) & ~index["label"].isin(exclude_classes)]
    if class_names is not None:
        rows = rows[rows["label"].isin(class_names)]
    if rows.empty:
        raise _fail(f"the dataset has no {split} images; add a batch with `refit data add`")
    size = (settings.architecture.input_size, settings.architecture.input_size)
    store, _ = _intake(settings)
    images = images_from_index(settings.dataset_dir, rows, size, class_names)
    return images, {"dataset_version": store.current_version(), "split": split}


def _save_with_card(settings: Settings, loaded, out: Path | None, recipe: str) -> Path:
    """Write a trained model (default: a timestamped file in the workspace) and its card."""
    import time

    from pipelines.modelfile import model_card_markdown, save_model

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out or settings.workspace / "models" / f"{recipe}-{stamp}.keras"
    save_model(loaded, out)
    out.with_suffix(".md").write_text(model_card_markdown(loaded, f"Model {out.name}"))
    console.print(f"Saved {out} and its card {out.with_suffix('.md')}")
    return out


@train_app.command("bootstrap")
def train_bootstrap(
    source: Annotated[
        Path | None,
        typer.Option(help="Batch-shaped images to train on (default: the dataset's train split)."),
    ] = None,
    exclude_class: Annotated[list[str], typer.Option(help="Leave this class out.")] = [],  # noqa: B006
    exclude_sample: Annotated[
        bool,
        typer.Option(
            help="Leave out the embedded sample's holdout and incoming images; report on its "
            "holdout."
        ),
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    out: Annotated[Path | None, typer.Option(help="Model file to write (.keras).")] = None,
) -> None:
    """Train a model from scratch and save it with its class names and a model card."""
    import sys
    import time

    settings = _settings()
    from pipelines.predict import holdout_metrics
    from pipelines.train import bootstrap

    started = time.monotonic()
    config = settings.train.model_copy(update={"epochs": epochs} if epochs else {})
    if source is None:
        images, data_card = _dataset_images(settings, "train", set(exclude_class))
    else:
        images, data_card = _source_images(
            settings, source, set(exclude_class), exclude_sample, console.print
        )
    loaded, _ = bootstrap(images, settings.architecture, config, progress=console.print)
    if source is None:
        holdout, _ = _dataset_images(settings, "holdout", set(exclude_class), loaded.class_names)
        title = "holdout (dataset)"
    elif exclude_sample:
        holdout, title = _sample_holdout(settings, loaded.class_names), "holdout (embedded sample)"
    if source is None or exclude_sample:
        metrics = holdout_metrics(loaded.model, loaded.class_names, holdout.x, holdout.y)
        loaded.card[title] = metrics
        console.print(
            f"Holdout accuracy {metrics['accuracy']:.4f} "
            f"(with flip TTA {metrics['accuracy_tta']:.4f}) on {metrics['images']} images"
        )
    loaded.card["data"] = data_card
    loaded.card["wall_time_s"] = round(time.monotonic() - started, 1)
    loaded.card["command"] = "refit " + " ".join(sys.argv[1:])
    _save_with_card(settings, loaded, out, "bootstrap")


@train_app.command("finetune")
def train_finetune(
    model: Annotated[
        Path | None,
        typer.Option(help="A model file to fine-tune (default: the registry's champion)."),
    ] = None,
    batch_id: Annotated[
        str | None,
        typer.Option(
            help="The merged batch to learn from (default: the latest dataset version's)."
        ),
    ] = None,
    register: Annotated[
        bool,
        typer.Option(
            help="Judge the result against the champion; register it, promote if blessed."
        ),
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Model file to write (.keras).")] = None,
) -> None:
    """Fine-tune on a merged batch with replay (growing the head for new classes), then
    judge the challenger against the champion and promote it only if the gate blesses it."""

    settings = _settings()
    from pipelines.candidate import judge_finetune
    from pipelines.dataset import evaluation_holdout, load_index
    from pipelines.modelfile import ModelRefused, load_refit_model
    from pipelines.predict import compare_on_holdout
    from pipelines.train import finetune_on_batch, images_from_index

    store, _ = _intake(settings)
    versions = store.versions()
    batch_id = batch_id or (versions[-1].batch_id if versions else None)
    index = load_index(settings.dataset_dir)
    if batch_id is None or index.empty:
        raise _fail("no dataset yet: add a batch with `refit data add` first")
    try:
        champion = (
            load_refit_model(model)
            if model is not None
            else _registry_call(lambda: _registry(settings).load("champion"))
        )
    except (ModelRefused, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    try:
        challenger, fits = finetune_on_batch(
            champion,
            settings.dataset_dir,
            index,
            batch_id,
            settings.finetune,
            progress=console.print,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    holdout = images_from_index(
        settings.dataset_dir,
        evaluation_holdout(index),
        champion.input_size,
        challenger.class_names,
    )  # decoded once, for both judgements
    report = compare_on_holdout(champion, challenger, holdout.x, holdout.y)
    for key, value in report.items():
        console.print(f"  {key}: {value}")
    challenger.card["holdout"] = report
    _save_with_card(settings, challenger, out, "finetune")
    if not register:
        return
    with console.status("Judging against the champion…"):
        outcome = _registry_call(
            lambda: judge_finetune(
                champion,
                challenger,
                fits,
                holdout,
                _registry(settings),
                settings.gate,
                batch_id=batch_id,
                params=settings.finetune.model_dump(),
                index=index,
                accepted_dir=settings.accepted_dir,
                dataset_dir=settings.dataset_dir,
                dataset_version=store.current_version(),
            )
        )
    console.print(outcome.decision.markdown(), highlight=False)
    state = "promoted to champion" if outcome.promoted else "registered, champion unchanged"
    console.print(f"Version {outcome.version}: {state}.")


# --------------------------------------------------------------------------- model


@model_app.command("import")
def model_import(
    file: Annotated[Path, typer.Argument(help="The user's .keras or legacy .h5 model.")],
    classes: Annotated[str, typer.Option(help="Class names in output order, comma-separated.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the .keras.")] = None,
) -> None:
    """Check a user's classifier (safe mode, no Lambda, HxWx3 in, softmax out) and re-save it."""
    settings = _settings()
    from pipelines.modelfile import ModelRefused, import_model, save_model

    try:
        loaded = import_model(file, [c for c in classes.split(",")])
    except ModelRefused as exc:
        raise _fail(str(exc)) from exc
    out = out or settings.workspace / "models" / f"imported-{file.stem}.keras"
    save_model(loaded, out)
    height, width = loaded.input_size
    console.print(
        f"Imported {file}: {width}x{height} RGB in, {len(loaded.class_names)} classes "
        f"({', '.join(loaded.class_names)}). Saved {out}"
    )


def _registry(settings: Settings):
    from refit.wiring import registry

    return registry(settings)


def _registry_call(fn):
    """Run a registry action, turning its errors into a clear message and exit code 1."""
    from pipelines.registry import RegistryError

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
    settings = _settings()
    from pipelines.candidate import judge
    from pipelines.dataset import evaluation_holdout, load_index
    from pipelines.evaluate import EvaluationError
    from pipelines.modelfile import ModelRefused, load_refit_model
    from pipelines.train import images_from_index

    try:
        challenger = load_refit_model(file)
    except (ModelRefused, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    index = load_index(settings.dataset_dir)
    rows = evaluation_holdout(index)
    if rows.empty:
        raise _fail("the dataset has no holdout to judge on; add a batch with `refit data add`")
    store, _ = _intake(settings)
    with console.status("Evaluating, registering…"):
        holdout = images_from_index(settings.dataset_dir, rows, challenger.input_size)
        try:
            outcome = _registry_call(
                lambda: judge(
                    challenger,
                    holdout,
                    _registry(settings),
                    settings.gate,
                    run_name=f"register {file.name}",
                    tags={"reason": reason},
                    dataset=index,
                    dataset_dir=settings.dataset_dir,
                    dataset_version=store.current_version(),
                    params=challenger.card.get("train", {}),
                )
            )
        except EvaluationError as exc:
            raise _fail(str(exc)) from exc
    console.print(outcome.decision.markdown(), highlight=False)
    state = "promoted to champion" if outcome.promoted else "registered, champion unchanged"
    console.print(f"Version {outcome.version}: {state}.")


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
    settings = _settings()
    path = _registry_call(lambda: _registry(settings).export(version or alias, out))
    console.print(f"Wrote {path}")
