"""The Retrain page's control plane: batch and model uploads (token required), following a
submission or flow run, and model downloads. Mounted on the public service's app.

Uploads go to the submission queue (``pipelines.data.submissions``) or start the bootstrap flow
through the Prefect API (``core.runs``); downloads read the registry. No model runs here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import anyio
from fastapi import APIRouter, Body, File, Form, Header, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from core import contract
from core.settings import Settings, get_settings
from serving.auth import UNAUTHORIZED, authorized, error

BATCH_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".csv")

router = APIRouter()


@router.post("/retrain/batch", summary="Submit a labelled batch; the retrain flow takes it")
async def submit_batch(
    archive: Annotated[UploadFile, File(description="zip / tar.gz / CSV of a batch")],
    authorization: Annotated[str | None, Header()] = None,
):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    name = Path(archive.filename or "batch.zip").name
    if not name.lower().endswith(BATCH_SUFFIXES):
        return error(400, f"{name}: upload a .zip, .tar, .tar.gz/.tgz or .csv batch")
    submission = await anyio.to_thread.run_sync(_queue_upload, get_settings(), name, archive.file)
    return {"submission": submission, "follow": f"/retrain/submissions/{submission}"}


@router.post("/retrain/model", summary="Upload your own model as a candidate")
async def upload_model(
    model: Annotated[
        UploadFile, File(description=".keras, Keras 2 .h5, or Teachable Machine's .zip export")
    ],
    classes: Annotated[
        str | None, Form(description="Class names in output order, comma-separated")
    ] = None,
    labels: Annotated[
        UploadFile | None,
        File(description="Class-list file: one name per line, or labels.txt ('0 cardboard')"),
    ] = None,
    pixels: Annotated[
        str | None, Form(description="Pixels the model expects: 0-255, 0-1, -1-1, ...")
    ] = None,
    authorization: Annotated[str | None, Header()] = None,
):
    from core import runs
    from pipelines.images.pixels import BadContract, parse

    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    name = Path(model.filename or "model.keras").name
    if Path(name).suffix not in (".keras", ".h5", ".zip"):
        return error(
            400, f"{name}: upload a .keras, a Keras 2 .h5, or a Teachable Machine .zip export"
        )
    named = bool(classes and [c for c in classes.split(",") if c.strip()])
    if not named and labels is None and Path(name).suffix != ".zip":
        return error(400, "classes: give the class names in output order, or a labels file")
    if pixels:
        try:
            parse(pixels)
        except BadContract as exc:
            return error(400, f"pixels: {exc}")
    uploads = get_settings().workspace / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=uploads))
    path = folder / name  # a folder of its own: two uploads of one name never collide
    with path.open("wb") as out:
        shutil.copyfileobj(model.file, out)
    parameters = {"model": str(path), "classes": classes if named else None, "pixels": pixels}
    if labels is not None:
        labels_path = folder / "labels.txt"  # the model's suffix is never .txt
        with labels_path.open("wb") as out:
            shutil.copyfileobj(labels.file, out)
        parameters["labels"] = str(labels_path)
    try:
        run_id = await anyio.to_thread.run_sync(runs.start, "bootstrap/bootstrap", parameters)
    except Exception as exc:
        return error(503, f"cannot start the bootstrap flow (is `refit up` running?): {exc}")
    return {"run": run_id, "follow": f"/retrain/runs/{run_id}"}


@router.post("/retrain/new-model", summary="Train a new model on the dataset as a candidate")
async def train_new_model(authorization: Annotated[str | None, Header()] = None):
    """The bootstrap flow with ``train_from_scratch``: the configured architecture (with its
    pretrained weights, if set) trained on the dataset's train split, judged like any
    candidate."""
    from core import runs

    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    parameters = {"train_from_scratch": True}
    try:
        run_id = await anyio.to_thread.run_sync(runs.start, "bootstrap/bootstrap", parameters)
    except Exception as exc:
        return error(503, f"cannot start the bootstrap flow (is `refit up` running?): {exc}")
    return {"run": run_id, "follow": f"/retrain/runs/{run_id}"}


@router.get("/retrain/submissions/{submission}", summary="A submission and its retrain run (token)")
async def submission_status(submission: str, authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    from core import runs
    from pipelines.data.submissions import Queue

    settings = get_settings()
    queue = Queue.of(settings)
    found = await anyio.to_thread.run_sync(queue.find, submission)
    if found is None:
        return error(404, f"no submission {submission!r}")
    try:
        run_id = await anyio.to_thread.run_sync(runs.find_submission_run, submission)
        run = await anyio.to_thread.run_sync(runs.view, run_id) if run_id else None
    except Exception as exc:
        run, found.detail = None, f"Prefect not reachable: {exc}"
    state = {k: getattr(found, k) for k in ("id", "status", "outcome", "detail")}
    waiting = [s.id for s in await anyio.to_thread.run_sync(queue.pending)]  # oldest first
    state["ahead"] = waiting.index(found.id) if found.id in waiting else 0
    return {"submission": state, "run": _run_json(settings, run)}


@router.get("/retrain/runs/{run_id}", summary="A flow run's steps, state and report (token)")
async def run_status(run_id: str, authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    from core import runs

    try:
        run = await anyio.to_thread.run_sync(runs.view, run_id)
    except Exception as exc:
        return error(404, f"no flow run {run_id}: {exc}")
    return {"run": _run_json(get_settings(), run)}


@router.get("/models/waiting", summary="Challengers waiting for a person's approval (token)")
async def waiting(authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    return await anyio.to_thread.run_sync(_waiting)


@router.post("/models/{version}/{action}", summary="Approve or reject a waiting challenger (token)")
async def decide(
    version: str,
    action: Literal["approve", "reject"],
    reason: Annotated[str, Body(embed=True, min_length=1, description="Why (recorded)")],
    authorization: Annotated[str | None, Header()] = None,
):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    return await anyio.to_thread.run_sync(_decide, version, action, reason)


def _moves():
    from pipelines.judge.registry_client import RegistryConfig
    from pipelines.judge.registry_moves import RegistryMoves

    settings = get_settings()
    return settings, RegistryMoves(RegistryConfig.of(settings))


def _waiting():
    from pipelines.judge.approval import expire
    from pipelines.judge.approval import waiting as waiting_versions

    settings, registry = _moves()
    expire(registry, settings.gate.approval_timeout_h, notify_config=settings.notify)
    rows = [
        {"version": w.version, "gate": w.outcome, "judged_against": w.champion}
        | {"hours": round(w.hours(), 2)}
        for w in waiting_versions(registry)
    ]
    return {"waiting": rows}


def _decide(version: str, action: str, reason: str):
    from pipelines.judge.approval import decide
    from pipelines.judge.registry_client import RegistryError

    settings, registry = _moves()
    link = f"{settings.mlflow_url}/#/models/{settings.registered_model_name}/versions/{version}"
    try:
        event = decide(
            registry, version, action, reason, settings.gate.approval_timeout_h,
            settings.notify, link, who="the console (admin token)",
        )  # fmt: skip
    except RegistryError as exc:
        return error(409, str(exc))
    return {"version": version, "decision": event}


@router.get("/models/{ref}/download", summary="A model version (or `champion`) as .keras (token)")
async def download(ref: str, authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    name = get_settings().registered_model_name
    return await _run_file(ref, contract.MODEL_FILE_ARTIFACT, lambda v: f"{name}-v{v}.keras")


@router.get(
    "/models/{ref}/negative-flips.png",
    summary="The holdout images the gate saw this version get wrong where its champion was "
    "right (token)",
)
async def negative_flips(ref: str, authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    return await _run_file(ref, contract.FLIPS_ARTIFACT, None, "no negative flips recorded")


async def _run_file(ref: str, artifact: str, filename, missing: str = "no model version"):
    """A file of a version's run (``filename(version)``: sent as a download), or 404."""
    from serving.champion import NoChampion, RegistrySource

    source = RegistrySource.from_settings(get_settings())
    target = Path(tempfile.mkdtemp(prefix="refit-download-"))
    try:
        version, path = await anyio.to_thread.run_sync(
            source.download_model_file, ref, str(target), artifact
        )
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        return error(404, str(exc) if isinstance(exc, NoChampion) else f"{missing}: {ref!r}")
    return FileResponse(
        path,
        filename=filename(version) if filename else None,
        background=BackgroundTask(shutil.rmtree, target, ignore_errors=True),
    )


def _queue_upload(settings: Settings, name: str, upload: BinaryIO) -> str:
    """Copy an uploaded batch (spooled on disk by the server) to a temp file, then queue it
    (moved, not copied again)."""
    from pipelines.data.submissions import Queue

    uploads = settings.workspace / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=uploads))
    with (folder / name).open("wb") as out:
        shutil.copyfileobj(upload, out)
    submission = Queue.of(settings).submit(folder / name, move=True)
    shutil.rmtree(folder, ignore_errors=True)
    return submission.id


def _run_json(settings: Settings, run) -> dict | None:
    if run is None:
        return None
    return {**run.as_dict(), "url": f"{settings.prefect_url}/runs/flow-run/{run.id}"}
