"""The Label page's routes: the queue of logged images to label next, their images, and
submitting a person's labels as a batch. All need the admin token (production images are
the users' data). Mounted on the public service's app.

The queue is ``pipelines.loop.labelqueue`` over the prediction log; submitted labels become a
normal batch (images + ``labels.csv``) in the submission queue, so they are validated like
any upload, and the ids they label are recorded so the queue skips them afterwards.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import anyio
from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import FileResponse, Response

from core.settings import get_settings
from serving.auth import UNAUTHORIZED, authorized, error

WEB = Path(__file__).parent / "web"
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
MEDIA = {".jpg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".bmp": "image/bmp"}

router = APIRouter()
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)  # a version's training sample never changes
def _training_features(version: str):
    from pipelines.loop.features import TrainingFeatures
    from serving.champion import RegistrySource

    data = RegistrySource.from_settings(get_settings()).training_features(version)
    return TrainingFeatures.from_bytes(data) if data else None


def _embedding():
    """The ImageNet embedding when the loop works in it and a registration built it (here,
    or on another host: then fetched from the log's store once), else None."""
    from pipelines.models.embedding import shared_embedding

    settings = get_settings()
    if settings.loop.queue_embedding != "imagenet":
        return None
    key = str(settings.weights_dir)
    if key not in _EMBEDDINGS:
        found = shared_embedding(settings.prediction_log_store(), settings.weights_dir)
        if found is None:
            log.warning("loop.queue_embedding is imagenet, but no registration built it yet")
            return None
        _EMBEDDINGS[key] = found
    return _EMBEDDINGS[key]


_EMBEDDINGS: dict[str, Any] = {}  # weights folder -> its embedding, loaded once


class _Loop(NamedTuple):
    """The newest log entries, the ids labelled since, the champion's training sample (None:
    registered before Refit kept it), and the ImageNet embedding when the loop works in it
    and the champion kept its sample's (None: the champion's own features, as logged)."""

    store: Any
    view: Any
    done: set[str]
    version: str | None
    reference: Any
    embed: Any
    where: str  # said after each answer's note when the page cannot work where it should

    def unlabelled(self):
        keep = [i for i, e in enumerate(self.view.entries) if e["id"] not in self.done]
        return [self.view.entries[i] for i in keep], self.view.features[keep]


def _loop() -> _Loop:
    from pipelines.loop import labelqueue, predlog
    from serving.champion import RegistrySource

    settings = get_settings()
    store = settings.prediction_log_store()
    view = predlog.read_log(store, newest=settings.loop.queue_images)
    version = RegistrySource.from_settings(settings).champion_version()
    reference = _training_features(version) if version else None
    embed = _embedding() if reference is not None and reference.imagenet is not None else None
    where = _where(settings.loop.queue_embedding, reference, embed)
    return _Loop(store, view, labelqueue.labelled_ids(store), version, reference, embed, where)


def _where(setting: str, reference, embed) -> str:
    """Why the page chooses in the champion's own features although ``loop.queue_embedding``
    names the ImageNet embedding (empty when it does not, or when it need not)."""
    if setting != "imagenet" or embed is not None or reference is None:
        return ""
    if reference.imagenet is None:
        return (" (in the champion's own features: it was registered without the ImageNet "
                "embedding; the next version registered keeps it)")  # fmt: skip
    return " (in the champion's own features: the ImageNet embedding is not in the log's store)"


def _queue(n: int) -> dict:
    from pipelines.loop import labelqueue, newclass
    from serving.champion import RegistrySource

    loop = _loop()
    source = RegistrySource.from_settings(get_settings())
    view, space = loop.view, None
    if loop.embed is not None:
        view, logged = newclass.embedded_view(view, loop.store, loop.embed, loop.done, log.info)
        space = (logged, loop.reference.imagenet)
    accuracy = source.holdout_accuracy(loop.version) if loop.version else None
    items = labelqueue.rank(view, loop.reference, n, loop.done, accuracy, space=space)
    classes = source.class_names(loop.version) if loop.version else []
    note = f"{len(items)} of {len(view)} logged images{loop.where}"
    if view.unreadable:
        note += f" ({view.unreadable} unreadable log lines skipped)"
    return {"items": [i.as_dict() for i in items], "classes": classes, "note": note}


def _groups() -> dict:
    from pipelines.loop import newclass

    loop = _loop()
    if loop.reference is None:
        raise _Refused(
            409,
            "the champion was registered before Refit kept training features: retrain it "
            "(or register it again) to find groups",
        )
    entries, features = loop.unlabelled()
    if loop.embed is not None:
        found = newclass.groups(
            loop.view, loop.store, loop.embed, loop.reference.imagenet, loop.done, log.info
        )
    else:
        found = newclass.groups_in(entries, features, loop.reference.features)
    note = (f"{len(found)} groups among {len(entries)} logged images" if found else
            f"No group of logged images stands apart from the training data "
            f"({len(entries)} looked at)")  # fmt: skip
    note += loop.where
    groups = [{"size": len(g), "items": [i.as_dict() for i in g]} for g in found]
    return {"groups": groups, "note": note, "classes": loop.reference.class_names}


def _like(seeds: list[str], n: int) -> dict:
    from pipelines.loop import newclass

    loop = _loop()
    try:
        if loop.embed is not None:
            known = loop.reference.imagenet
            items = newclass.like(
                loop.view, loop.store, loop.embed, seeds, [], n, loop.done, log.info, known
            )
        else:
            entries, features = loop.unlabelled()
            known = None if loop.reference is None else loop.reference.features
            items = newclass.like_in(entries, features, seeds, n, known=known)
    except ValueError as exc:
        raise _Refused(400, str(exc)) from exc
    return {"items": [i.as_dict() for i in items],
            "note": f"{len(items)} logged images most like the {len(seeds)} marked"
                    f"{loop.where}"}  # fmt: skip


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@router.get("/label/groups", summary="Logged images unlike the training data, in groups (token)")
async def label_groups(authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    try:
        return await anyio.to_thread.run_sync(_groups)
    except _Refused as exc:
        return error(exc.status, str(exc))
    except Exception as exc:
        return error(503, f"cannot find groups: {exc}")


@router.get("/label/like", summary="Logged images most like the marked ones (token)")
async def label_like(
    seed: Annotated[list[str], Query(description="Logged image ids (repeat)")],
    n: Annotated[int, Query(ge=1, le=500)] = 48,
    authorization: Annotated[str | None, Header()] = None,
):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    if bad := [s for s in seed if not IMAGE_ID.match(s)]:
        return error(400, f"{bad[0][:70]!r} is not an image id (64 hex digits)")
    try:
        return await anyio.to_thread.run_sync(_like, seed, n)
    except _Refused as exc:
        return error(exc.status, str(exc))
    except Exception as exc:
        return error(503, f"cannot find more like these: {exc}")


@router.get("/label", include_in_schema=False)
async def label_page():
    return FileResponse(WEB / "label.html")


@router.get("/label/queue", summary="Logged images to label next, best first (token)")
async def label_queue(
    n: Annotated[int, Query(ge=1, le=500)] = 48,
    authorization: Annotated[str | None, Header()] = None,
):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    try:
        return await anyio.to_thread.run_sync(_queue, n)
    except Exception as exc:
        return error(503, f"cannot build the label queue: {exc}")


@router.get("/label/images/{image_id}", summary="A logged image (token)")
async def label_image(image_id: str, authorization: Annotated[str | None, Header()] = None):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    if not IMAGE_ID.match(image_id):
        return error(400, f"{image_id!r} is not an image id (64 hex digits)")
    store = get_settings().prediction_log_store()
    found = await anyio.to_thread.run_sync(_find_image, store, image_id)
    if found is None:
        return error(404, f"image {image_id[:12]} is no longer in the prediction log")
    suffix, data = found
    return Response(data, media_type=MEDIA.get(suffix, "application/octet-stream"))


def _find_image(store, image_id: str) -> tuple[str, bytes] | None:
    for name in store.names(store.path("images", image_id[:2])):
        if name.startswith(image_id):
            data = store.read_bytes(store.path("images", image_id[:2], name))
            return (Path(name).suffix, data) if data is not None else None
    return None


@router.post("/retrain/labels", summary="Submit labels for logged images as a batch (token)")
async def submit_labels(
    labels: Annotated[dict[str, str], Body(embed=True, description="image id -> label")],
    authorization: Annotated[str | None, Header()] = None,
):
    if not authorized(authorization):
        return error(401, UNAUTHORIZED)
    labels = {k: v.strip() for k, v in labels.items() if v and v.strip()}
    if not labels:
        return error(400, "labels: give at least one image id with its label")
    bad = sorted(k for k in labels if not IMAGE_ID.match(k))
    if bad:
        return error(400, f"not image ids (64 hex digits): {', '.join(b[:16] for b in bad)}")
    from pipelines.images.names import RULE, is_valid

    if unsafe := sorted({v for v in labels.values() if not is_valid(v)}):
        return error(400, f"label {unsafe[0][:80]!r}: a class name is {RULE}; nothing submitted")
    return await anyio.to_thread.run_sync(_submit, labels)


def _submit(labels: dict[str, str]):
    from pipelines.data.submissions import Queue
    from pipelines.loop import labelqueue

    settings = get_settings()
    store = settings.prediction_log_store()
    found = {k: _find_image(store, k) for k in labels}
    missing = sorted(k for k, v in found.items() if v is None)
    if missing:  # all or nothing: a batch with holes would teach from a part of the work
        return error(
            409,
            f"{len(missing)} of {len(labels)} images are no longer in the prediction log "
            f"(retention removed them): {', '.join(m[:12] for m in missing)}; nothing was "
            "submitted: drop them and submit again",
        )
    held_out = labelqueue.hold_out(labels, settings.loop.production_holdout_share)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        rows = ["filename,label"]
        for image_id, (suffix, data) in found.items():
            if image_id in held_out:  # the production holdout: never trained on
                continue
            name = f"images/{image_id[:16]}{suffix}"
            archive.writestr(name, data)
            label = labels[image_id].replace('"', '""')
            rows.append(f'{name},"{label}"')
        archive.writestr("labels.csv", "\n".join(rows) + "\n")
    uploads = settings.workspace / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=uploads))
    path = folder / f"labels-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    path.write_bytes(buffer.getvalue())
    submission = Queue.of(settings).submit(path, move=True)
    shutil.rmtree(folder, ignore_errors=True)
    labelqueue.record_labelled(store, submission.id, labels, held_out)
    return {
        "submission": submission.id,
        "images": len(labels) - len(held_out),
        "held_out": len(held_out),
        "follow": f"/retrain/submissions/{submission.id}",
    }
