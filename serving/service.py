"""The BentoML services: the champion behind an HTTP API with adaptive batching, and the pages.

Two services, one ``bentoml serve serving.service:Refit``:

- :class:`Classifier` holds the champion (``serving.champion``) and exposes the batchable
  ``classify`` method. BentoML's adaptive batcher only runs when that method is reached
  through ``bentoml.depends`` from another service, so it lives in its own worker.
- :class:`Refit` is the public face: decodes uploads (``pipelines.images.decode``, no TensorFlow
  in this worker), calls ``classify``, and serves ``/predict``, ``/predict_batch``,
  ``/model``, ``/admin/reload``, the console at ``/`` with sign-in (``serving.console``)
  and the Try, Retrain and Label pages (``serving/web``; the Retrain page's routes are
  ``serving.retrain``, the Label page's ``serving.label``).
  BentoML adds ``/healthz``, ``/livez``,
  ``/readyz`` (ready once the champion is loaded and warmed) and ``/metrics`` (Prometheus).

``classify`` returns one row per image: column 0 is the version of the model that answered
(NaN when there is no champion), then its K probabilities, then (with the prediction log
on) the image's features. A request is thus answered by exactly one complete model even
while the champion is being swapped. The public service hands each answer to the
prediction log's background writer (``pipelines.loop.predlog``) and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, File, Header, Query, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from core.settings import get_settings
from pipelines.images.decode import BadImage, load_upload, open_upload
from serving import console, label, retrain
from serving.auth import UNAUTHORIZED, MetricsGuard, Sessions, authorized, error
from serving.batcher import LocalBatcher, Shed
from serving.worker import settle

# BentoML takes the batching knobs from the decorators below: the one place serving reads
# its settings while the module loads. Everything else reads them per request.
BATCHING = get_settings().serving
WEB = Path(__file__).parent / "web"
IMAGE_FORMATS = "JPEG, PNG, WebP, BMP, GIF or TIFF"
INLINE_PIXELS = 64 * 64  # uploads this small decode on the event loop


# BentoML 1.4 recycles the caller's connection pool every 100 requests or 300 s and closes
# the old pool with requests still in flight on it ("Server disconnected" -> 500 under
# load). Recycling buys nothing between two local processes, so it is effectively off.
NEVER_RECYCLE = {"max_requests": 2**31, "max_age": 10.0**9}


@bentoml.service(
    name="classifier", workers=1, traffic={"timeout": 60}, runner_connection=NEVER_RECYCLE
)
class Classifier:
    """The champion model with an adaptive batching entry point."""

    def __init__(self) -> None:
        from serving.champion import ChampionHolder, RegistrySource

        settings = get_settings()
        config = settings.serving
        source = RegistrySource.from_settings(settings)
        self.holder = ChampionHolder(  # the public worker serves registered engines itself
            source,
            config.engine,
            config.onnx_tolerance,
            config.threads,
            deferred=config.public_worker_engine,
        )
        self.described: dict[str, dict] = {}
        self.with_features = settings.loop.log_predictions
        self.reload()
        settle()
        self.holder.watch(config.poll_interval_s)

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    @bentoml.api(
        batchable=True,
        max_batch_size=BATCHING.max_batch_size,
        max_latency_ms=BATCHING.max_latency_ms,
    )
    def classify(self, images: np.ndarray) -> np.ndarray:
        """[version, p_0 .. p_K-1] per uint8 image (N, H, W, 3); batched under load."""
        return self._rows(images)

    @bentoml.api
    def classify_now(self, images: np.ndarray) -> np.ndarray:
        """The same, without the batcher: for a request that arrives alone (the batcher
        would hold it for the wait it learned under load). Used for versions without a
        registered engine (the public worker batches the others itself)."""
        return self._rows(images)

    def _rows(self, images: np.ndarray) -> np.ndarray:
        champion = self.holder.current
        if champion is None:
            return np.full((len(images), 1), np.nan, dtype=np.float32)
        return champion.rows(images, self.with_features)

    @bentoml.api
    def describe(self, version: str = "") -> dict:
        """The serving champion (or a recently served ``version``) and the last load error."""
        champion = self.holder.current
        if champion is not None:
            self.described.setdefault(champion.version, champion.describe())
        found = self.described.get(version) if version else None
        if found is None and champion is not None:
            found = self.described[champion.version]
        return {"model": found, "error": self.holder.error}

    @bentoml.api
    def reload(self) -> dict:
        """Check the registry now and swap if the alias moved."""
        result = self.holder.refresh()
        if self.holder.current is not None:
            current = self.holder.current
            self.described[current.version] = current.describe()
        return result


app = FastAPI(
    title="Refit",
    description="The current champion image classifier, its pages and its admin actions.",
    version="1",
    docs_url=None,  # served below from local files: no script from a CDN on this origin
)
app.include_router(console.router)
app.include_router(retrain.router)
app.include_router(label.router)


class BodyLimit:
    """Limits checked before a body is taken in: an upload to ``/retrain/...`` without the
    admin token is refused (401) before a byte of it is read; a body over its limit
    (``serving.max_upload_bytes``; uploads: ``max_dataset_upload_bytes``) gets 413, whether
    it declares its length or streams in chunks."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        config = get_settings().serving
        headers = dict(scope.get("headers", []))
        uploads = scope["path"].startswith("/retrain/")
        if uploads and scope["method"] == "POST":
            token = headers.get(b"authorization", b"").decode("latin-1") or None
            if not authorized(token):
                return await error(401, UNAUTHORIZED)(scope, receive, send)
        limit = config.max_dataset_upload_bytes if uploads else config.max_upload_bytes
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > limit:
            return await self._refuse(scope, receive, send, limit)
        seen, over, answered = 0, False, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                raise _TooLarge
            return message

        async def guarded(message):  # once over the limit, the app's own answer is dropped
            nonlocal answered
            if not over:
                answered = True
                await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counted, guarded)
        if over and not answered:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope, receive, send, limit: int):
        response = JSONResponse({"error": f"request body over the limit of {limit:,} bytes"}, 413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


app.add_middleware(BodyLimit)
app.add_middleware(Sessions)  # outermost: a signed-in person's request carries the token


class Overloaded(Exception):
    """The classifier shed a request: answered 503 with Retry-After, never 500."""


def busy() -> JSONResponse:
    return JSONResponse(
        {"error": "the server is busy; try again shortly"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _decode(uploads: list[tuple[str, bytes]], size: tuple[int, int]) -> np.ndarray:
    """The uploads as the model's input: headers read here, and the pixels decoded here too
    when there are at most ``INLINE_PIXELS`` of them (a thread hop costs more than that),
    else in a thread (a large image must not stall other requests)."""
    max_pixels = get_settings().serving.max_image_pixels
    opened = [(name, open_upload(data, max_pixels, name)) for name, data in uploads]
    if sum(image.width * image.height for _, image in opened) <= INLINE_PIXELS:
        return _load_all(opened, size)
    return await anyio.to_thread.run_sync(_load_all, opened, size)


def _load_all(opened: list[tuple[str, Image.Image]], size: tuple[int, int]) -> np.ndarray:
    return np.stack([load_upload(image, size, name) for name, image in opened])


def _top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs)[: max(1, min(k, len(classes)))]
    return [{"label": classes[i], "probability": round(float(probs[i]), 6)} for i in order]


@bentoml.service(name="refit", workers=1, traffic={"timeout": 120})
@bentoml.asgi_app(app, path="/")
class Refit:
    """Prediction API, model info, admin reload and the Try / Retrain pages."""

    classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        self.models: dict[str, dict] = {}
        self.input_size: tuple[int, int] | None = None
        self.in_flight = 0  # model calls under way in this worker
        settings = get_settings()
        self.with_features = settings.loop.log_predictions
        self.local = None  # the champion's registered engine, run in this worker
        self.batcher = LocalBatcher(
            settings.serving.max_batch_size, settings.serving.max_latency_ms
        )
        if settings.serving.public_worker_engine:
            from serving.champion import ChampionHolder, RegistrySource

            config = settings.serving
            source = RegistrySource.from_settings(settings)
            self.local = ChampionHolder(
                source, "onnx", config.onnx_tolerance, config.threads, registered_only=True
            )
            threading.Thread(target=self._first_load, daemon=True).start()
            self.local.watch(config.poll_interval_s)
        self.log = None
        if settings.loop.log_predictions:
            from pipelines.loop.predlog import LogWriter

            self.log = LogWriter(settings.prediction_log_store(), settings.loop)

    def _first_load(self) -> None:
        self.local.refresh()
        settle()

    async def __is_ready__(self) -> bool:
        """Ready once the classifier has a champion loaded and warmed (answers within 3 s;
        BentoML's own dependency probe would wait much longer while the classifier starts)."""
        try:
            described = await asyncio.wait_for(self.classifier.to_async.describe(), 3)
        except Exception:
            return False
        return described["model"] is not None

    async def _model(self, version: str) -> dict | None:
        local = self.local.current if self.local else None
        if version not in self.models and local is not None and local.version == version:
            self.models[version] = local.describe()
        if version not in self.models:
            described = await self.classifier.to_async.describe(version=version)
            if described["model"] and described["model"]["version"] == version:
                self.models[version] = described["model"]
        return self.models.get(version)

    async def _input_size(self, refresh: bool = False) -> tuple[int, int] | JSONResponse:
        """The champion's input size, asked of the classifier only when not known yet (or
        when an answer says the champion changed): no extra hop per request."""
        if self.input_size is None or refresh:
            described = await self.classifier.to_async.describe()
            if described["model"] is None:
                return error(503, described["error"] or "no champion model is loaded yet")
            self.models.setdefault(described["model"]["version"], described["model"])
            self.input_size = tuple(described["model"]["input_size"])
        return self.input_size

    def _local_rows(self, images: np.ndarray) -> np.ndarray:
        champion = self.local.current
        if champion is None:  # NaN versions: the caller asks again
            return np.full((len(images), 1), np.nan, dtype=np.float32)
        return champion.rows(images, self.with_features)

    async def _call_model(self, batch: np.ndarray) -> np.ndarray:
        """The registered engine in this worker, batched here (:mod:`serving.batcher`); else
        (a version without one, Keras engine) the classifier worker: alone straight to it,
        with company through BentoML's adaptive batcher.

        Raises:
            Overloaded: the batcher shed the request (over its latency budget).
        """
        local = self.local.current if self.local else None
        if local is not None and batch.shape[1:3] == local.input_size:
            try:
                return await self.batcher(self._local_rows, batch)
            except Shed as exc:
                raise Overloaded(str(exc)) from exc
        self.in_flight += 1
        try:
            if self.in_flight == 1:
                return await self.classifier.to_async.classify_now(batch)
            return await self.classifier.to_async.classify(batch)
        except BentoMLException as exc:
            if exc.error_code in (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS):
                raise Overloaded(str(exc)) from exc
            raise
        finally:
            self.in_flight -= 1

    async def _classify(self, uploads: list[tuple[str, bytes]], top_k: int | None, tta: bool):
        top_k = top_k or get_settings().serving.top_k
        for attempt in range(3):  # no champion known, or it changed size: ask, then retry
            size = await self._input_size(refresh=attempt > 0)
            if isinstance(size, JSONResponse):
                return size
            try:
                images = await _decode(uploads, size)
            except BadImage as exc:
                return error(400, str(exc))
            batch = np.concatenate([images, images[:, :, ::-1]]) if tta else images
            try:
                rows = await self._call_model(batch)
            except Overloaded:
                return busy()
            versions = rows[:, 0]
            if not np.isnan(versions).any() and (versions == versions[0]).all():
                break
            await asyncio.sleep(0.05)
        else:
            return error(503, "the model was being replaced; try again")
        version = str(int(versions[0]))
        model = await self._model(version)
        if model is None:
            return error(503, f"model version {version} is no longer served; try again")
        classes = model["classes"]
        probs, features = rows[:, 1 : 1 + len(classes)], rows[:, 1 + len(classes) :]
        if tta:
            probs = (probs[: len(images)] + probs[len(images) :]) / 2
        if self.log is not None and features.shape[1]:
            self.log.record(uploads, version, classes, probs, features[: len(images)])
        return {
            "model_version": version,
            "predictions": [
                {"file": name, "top_k": _top_k(p, model["classes"], top_k)}
                for (name, _), p in zip(uploads, probs, strict=True)
            ],
        }

    @app.post("/predict", summary="Top-k labels for one uploaded image")
    async def predict(
        self,
        image: Annotated[UploadFile, File(description=IMAGE_FORMATS)],
        top_k: Annotated[int | None, Query(ge=1, le=100)] = None,
        tta: Annotated[bool, Query(description="Average with the mirrored image")] = False,
    ):
        upload = (image.filename or "image", await image.read())
        result = await self._classify([upload], top_k, tta)
        if isinstance(result, JSONResponse):
            return result
        return {"model_version": result["model_version"], **result["predictions"][0]}

    @app.post("/predict_batch", summary="Top-k labels for several uploaded images")
    async def predict_batch(
        self,
        images: Annotated[list[UploadFile], File(description=IMAGE_FORMATS)],
        top_k: Annotated[int | None, Query(ge=1, le=100)] = None,
        tta: bool = False,
    ):
        most = get_settings().serving.max_batch_images
        if len(images) > most:
            return error(413, f"at most {most} images per call")
        uploads = [(f.filename or f"image{i}", await f.read()) for i, f in enumerate(images)]
        return await self._classify(uploads, top_k, tta)

    @app.get("/model", summary="The serving champion: version, classes, holdout metrics")
    async def model(self):
        described = await self.classifier.to_async.describe()
        local = self.local.current if self.local else None
        if local is not None and local.version == (described["model"] or {}).get("version"):
            described["model"] = local.describe()  # the engine that answers, as loaded here
        described["public_worker_engine"] = local.version if local else None
        status = 200 if described["model"] else 503
        return JSONResponse(_finite(described), status_code=status)

    @app.post("/admin/reload", summary="Check the registry now; swap if `champion` moved")
    async def reload(self, authorization: Annotated[str | None, Header()] = None):
        if not authorized(authorization):
            return error(401, UNAUTHORIZED)
        result = await self.classifier.to_async.reload()
        if self.local is not None:  # this worker's engine follows at once
            await anyio.to_thread.run_sync(self.local.refresh)
        return JSONResponse(result, status_code=200 if result["error"] is None else 500)

    @app.get("/retrain", include_in_schema=False)
    async def retrain_page(self):
        return FileResponse(WEB / "retrain.html")

    @app.get("/try", include_in_schema=False)
    async def try_page(self):
        return FileResponse(WEB / "try.html")

    @app.get("/docs", include_in_schema=False)
    async def docs(self):
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Refit API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-light-32x32.png",
        )

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(self, name: str):
        if name not in DOCS_ASSETS:
            return error(404, f"no such docs asset: {name}")
        return FileResponse(_swagger_dir() / name)

    @app.get("/web/{name}", include_in_schema=False)
    async def asset(self, name: str):
        path = WEB / Path(name).name
        if not path.is_file():
            return error(404, f"no such page asset: {name}")
        return FileResponse(path)


Refit.add_asgi_middleware(MetricsGuard)  # the whole server's: /metrics is BentoML's

DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-light-32x32.png")


def _swagger_dir() -> Path:
    """The Swagger UI files BentoML ships (pinned with it in the lock)."""
    from bentoml._internal import server

    return Path(server.__file__).parent / "static_content"


def _finite(value):
    """JSON-safe: NaN metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
