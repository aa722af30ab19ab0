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
    embedding: Annotated[
        str | None,
        typer.Option(help="champion or imagenet (default: the loop.queue_embedding setting)."),
    ] = None,
) -> None:
    """Export the logged images worth labelling next as a batch skeleton: the images and a
    labels.csv pre-filled with the champion's guess. Correct the labels, then
    `refit data submit` it."""
    settings = load_settings()
    from core.contract import CHAMPION
    from pipelines import workspace
    from pipelines.loop import labelqueue, predlog
    from pipelines.loop.features import TrainingFeatures

    asked, embedding = embedding, embedding or settings.loop.queue_embedding
    if embedding not in ("champion", "imagenet"):
        raise fail(f"--embedding {embedding!r}: give champion or imagenet")
    registry = registry_of(settings)
    version = registry_call(lambda: registry.alias_version(CHAMPION))
    data = registry_call(lambda: registry.training_features(version)) if version else None
    accuracy = registry_call(lambda: registry.holdout_accuracy(version)) if version else None
    dataset = workspace.dataset(settings)
    store = settings.prediction_log_store()
    view = predlog.read_log(store, newest=settings.loop.queue_images)
    exclude = set(dataset.index.get("sha256", [])) | labelqueue.labelled_ids(store)
    reference = TrainingFeatures.from_bytes(data) if data else None
    if version and data is None:
        console.print(
            f"[yellow]Champion version {version} was registered before Refit kept training "
            "features: no novelty picks. Retrain (or register it again) to get them.[/]"
        )
    space = None
    if embedding == "imagenet":
        try:
            view, space = _imagenet_space(settings, dataset, view, store, exclude, reference)
        except ValueError as exc:  # the weights missing or altered, no training images
            if asked:
                raise fail(str(exc)) from exc
            console.print(f"[yellow]Not in the ImageNet embedding ({exc}): choosing in the "
                          "champion's own features.[/]", highlight=False)  # fmt: skip
    items = labelqueue.rank(view, reference, n, exclude, accuracy, space=space)
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
    reasons = Counter(r.split(" (")[0].split(":")[0] for item in items for r in item.reasons)
    why = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    console.print(f"Wrote {written} images + labels.csv to {path} ({why}).")
    console.print("Correct the `label` column, then: refit data submit " + str(path))


def _imagenet_space(settings, dataset, view, store, exclude, reference):
    """The log (its images still there) and (its, the training sample's) ImageNet
    embeddings."""
    from pipelines.loop import newclass
    from pipelines.models.imagenet import imagenet_embedding

    embed = imagenet_embedding(settings.weights_dir, progress=console.print)
    training = _training_embedding(dataset, embed, reference)
    view, logged = newclass.embedded_view(view, store, embed, exclude, console.print)
    return view, (logged, training)


def _champion_sample(settings):
    """The champion's stored training sample (``TrainingFeatures``), or None (none kept, no
    champion, or the registry not answering: said, as the dataset's images then serve)."""
    from core.contract import CHAMPION
    from pipelines.judge.registry_client import RegistryError
    from pipelines.loop.features import TrainingFeatures

    try:
        registry = registry_of(settings)
        version = registry.alias_version(CHAMPION)
        data = registry.training_features(version) if version else None
    except RegistryError as exc:
        console.print(f"[yellow]The model registry did not answer ({exc}): comparing with "
                      "the dataset's training images.[/]", highlight=False)  # fmt: skip
        return None
    return TrainingFeatures.from_bytes(data) if data else None


def _training_embedding(dataset, embed, reference, sample: int = 1000, required: bool = True):
    """The training images' ImageNet embedding: the one the champion's version keeps of its
    training sample (registered with ``loop.queue_embedding = imagenet``), else that of a
    stratified sample of ``sample`` of the dataset's training images; with neither, None
    unless ``required`` (then ValueError)."""
    from pipelines.images.decode import stratified_sample

    if reference is not None and reference.imagenet is not None:
        console.print(f"Comparing with the champion's training sample ({len(reference.labels)} "
                      "images, embedded when it was registered)")  # fmt: skip
        return reference.imagenet
    rows = dataset.rows("train")
    if rows.empty:
        if not required:
            return None
        raise ValueError("the dataset has no training images to compare with; add a batch first")
    codes = rows["label"].astype("category").cat.codes.to_numpy()
    rows = rows.iloc[stratified_sample(codes, sample, seed=0)]
    console.print(f"Embedding {len(rows)} training images")
    return embed(dataset.images(rows, (embed.input_px, embed.input_px)).x)


@label_app.command("like")
def label_like(
    out: Annotated[
        Path, typer.Option(help="Where to write the batch skeleton: a .zip or a new folder.")
    ],
    label: Annotated[str, typer.Option(help="The class name the picks are pre-filled with.")],
    seed: Annotated[
        list[str], typer.Option(help="A logged image id to find more like (repeatable).")
    ] = [],  # noqa: B006
    example: Annotated[
        list[Path], typer.Option(help="An image file to find more like (repeatable).")
    ] = [],  # noqa: B006
    n: Annotated[int, typer.Option("--n", min=1, help="How many images to choose.")] = 50,
    sample: Annotated[
        int,
        typer.Option(
            min=10,
            help="Training images compared with (a stratified sample), when the champion "
            "keeps no ImageNet embedding of its own sample.",
        ),
    ] = 1000,
) -> None:
    """ "More like these": the logged images most like a few seed images (logged ids or
    files) and unlike the training images, in the ImageNet embedding, exported as a batch
    skeleton labelled LABEL, so a new class reaches intake's minimum quickly. Check the
    picks, then `refit data submit` it."""
    settings = load_settings()
    from pipelines import workspace
    from pipelines.images.names import RULE, is_valid
    from pipelines.loop import labelqueue, newclass, predlog
    from pipelines.models.imagenet import imagenet_embedding

    if not is_valid(label):
        raise fail(f"--label {label!r}: a class name is {RULE}")
    examples = []
    for path in example:
        if not path.is_file():
            raise fail(f"{path}: no such file")
        examples.append((str(path), path.read_bytes()))
    store = settings.prediction_log_store()
    view = predlog.read_log(store, newest=settings.loop.queue_images)
    dataset = workspace.dataset(settings)
    labelled = set(dataset.index.get("sha256", [])) | labelqueue.labelled_ids(store)
    try:
        embed = imagenet_embedding(settings.weights_dir, progress=console.print)
        # what the champion knows, to tell the seeds from (none yet: likeness alone)
        reference = _champion_sample(settings)
        training = _training_embedding(dataset, embed, reference, sample, required=False)
        items = newclass.like(
            view, store, embed, seed, examples, n, labelled, console.print, training
        )
        if not items:
            raise fail(f"nothing to pick: the prediction log holds {len(view)} images")
        path, written, gone = labelqueue.export(items, store, out, label)
    except (ValueError, FileExistsError) as exc:  # also the weights missing or altered
        raise fail(str(exc)) from exc
    console.print(f"Wrote {written} images + labels.csv (label {label!r}) to {path}.")
    if gone:
        console.print(f"[yellow]{len(gone)} images left out: retention removed them.[/]")
    console.print("Remove the ones that are not, then: refit data submit " + str(path))


@label_app.command("groups")
def label_groups(
    out: Annotated[Path, typer.Option(help="A new folder: one batch skeleton per group.")],
    sample: Annotated[
        int,
        typer.Option(
            min=10,
            help="Training images compared with (a stratified sample), when the champion "
            "keeps no ImageNet embedding of its own sample.",
        ),
    ] = 1000,
) -> None:
    """The new-class channel: logged images unlike anything in the training data, in
    groups that look alike (ImageNet embedding), each written as a batch skeleton to
    name in one step: set its label column, then `refit data submit` it."""
    settings = load_settings()
    from pipelines import workspace
    from pipelines.loop import labelqueue, newclass, predlog
    from pipelines.models.imagenet import imagenet_embedding

    if out.exists() and any(out.iterdir()):
        raise fail(f"{out} exists and is not empty: give a new folder")
    dataset = workspace.dataset(settings)
    store = settings.prediction_log_store()
    view = predlog.read_log(store, newest=settings.loop.queue_images)
    try:
        embed = imagenet_embedding(settings.weights_dir, progress=console.print)
        training = _training_embedding(dataset, embed, _champion_sample(settings), sample)
        known = set(dataset.index.get("sha256", [])) | labelqueue.labelled_ids(store)
        found = newclass.groups(view, store, embed, training, known, console.print)
    except ValueError as exc:  # the weights missing or altered
        raise fail(str(exc)) from exc
    if not found:
        console.print(f"No group of logged images stands apart from the training data "
                      f"({len(view)} logged images looked at).")  # fmt: skip
        return
    for number, items in enumerate(found, start=1):
        name = f"group-{number}"  # a placeholder a person replaces with the class name
        path, written, _ = labelqueue.export(items, store, out / name, name)
        console.print(f"group {number}: {written} images alike and unlike any class -> {path}")
    console.print(
        "Replace group-N in a group's labels.csv with the class name (an existing class "
        "makes it a correction), drop the odd ones, then: refit data submit <folder>"
    )
