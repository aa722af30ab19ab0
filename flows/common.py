"""What every flow shares: the settings, the run's logger, asking serving to reload, the
live smoke check, and the links that end a report."""

from __future__ import annotations

import contextlib
import importlib
import threading
from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.settings import Settings, get_settings


def settings() -> Settings:
    return get_settings()


def importing(*modules: str) -> threading.Thread:
    """Import ``modules`` on a thread (TensorFlow through Keras, MLflow: ~6 s of a run's
    start) while the caller waits on the network; join it before using them."""

    def run() -> None:
        for module in modules:
            with contextlib.suppress(Exception):  # the caller's own import raises it
                importlib.import_module(module)

    thread = threading.Thread(target=run, name="importing", daemon=True)
    thread.start()
    return thread


def log():
    """The run's logger (shown in the Prefect UI), or a plain one outside a run."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("refit.flows")


def http_step(fn):
    """A task that talks to serving; :func:`with_http_retries` gives it its retries."""
    return task(fn, name=fn.__name__.replace("_", " "), cache_policy=NO_CACHE)


def with_http_retries(step):
    """``step`` with the retries the settings ask for (read when the run starts)."""
    config = settings().orchestration
    return step.with_options(
        retries=config.http_retries, retry_delay_seconds=config.http_retry_delay_s
    )


@http_step
def reload_serving(version: str) -> dict:
    """Ask every serving replica to load the new champion now (each would within its poll
    interval). Done only when all answer with ``version``; otherwise fails (after retries)
    naming the replicas that lag. The registry stays as it is."""
    from concurrent.futures import ThreadPoolExecutor

    config = settings()

    def reload(replica: str):
        try:
            answer = httpx.post(
                f"{replica}/admin/reload",
                headers={"Authorization": f"Bearer {config.admin_token()}"},
                timeout=120,
            )
            body = answer.json() if answer.status_code in (200, 500) else None
            if body is None:
                answer.raise_for_status()
            return body
        except (httpx.HTTPError, ValueError) as exc:
            return exc

    replicas = config.serving_replicas()
    with ThreadPoolExecutor(max_workers=len(replicas)) as pool:  # all load at once
        answers = list(pool.map(reload, replicas))
    loaded, lagging = {}, []
    for replica, body in zip(replicas, answers, strict=True):
        if isinstance(body, Exception):
            lagging.append(f"{replica} ({type(body).__name__}: {body})")
            continue
        loaded[replica] = body.get("version")
        if body.get("version") != version:
            why = body.get("error") or "it did not see the alias move"
            lagging.append(f"{replica} (keeps v{body.get('version')}: {why})")
    if lagging:
        raise RuntimeError(f"not every replica serves v{version}; lagging: {'; '.join(lagging)}")
    log().info("every replica serves v%s: %s", version, ", ".join(loaded))
    return {"version": version, "replicas": loaded}


@http_step
def smoke_check(version: str, model, dataset) -> dict:
    """Send holdout images to the live endpoint; compare with offline predictions."""
    import numpy as np

    from pipelines.data.dataset import evaluation_holdout
    from pipelines.models.predict import predict_proba

    config = settings()
    rows = evaluation_holdout(dataset.index)
    rows = rows.sample(min(len(rows), config.orchestration.smoke_images), random_state=0)
    images = dataset.images(rows, model.input_size, model.class_names)
    offline = np.array(model.class_names)[predict_proba(model.model, images.x).argmax(axis=1)]
    files = [
        ("images", (path.name, (dataset.dir / path).read_bytes()))
        for path in map(Path, rows["path"])
    ]
    answer = httpx.post(
        f"{config.public_serving_url}/predict_batch",
        files=files,
        params={"top_k": 1},
        timeout=120,
    )
    answer.raise_for_status()
    body = answer.json()
    live = np.array([p["top_k"][0]["label"] for p in body["predictions"]])
    truth = np.array(model.class_names)[images.y]
    result = {
        "version": body["model_version"],
        "images": len(live),
        "agreement": float((live == offline).mean()),
        "accuracy": float((live == truth).mean()),
    }
    log().info("live smoke check: %s", result)
    if body["model_version"] != version:
        raise RuntimeError(f"serving answers with v{body['model_version']}, not v{version}")
    if result["agreement"] < config.orchestration.smoke_min_agreement:
        raise RuntimeError(f"live answers match offline ones on only {result['agreement']:.1%}")
    return result


def reach_shared_servers() -> None:
    """Fail now, naming the setting, when this worker cannot reach the shared store or the
    tracking server (rather than half-way through a run)."""
    config = settings()
    config.shared_store().check()  # StoreError names REFIT_STORE_URL and the credentials
    uri = str(config.mlflow_tracking_uri)
    if uri.startswith("http"):
        try:
            httpx.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeError(
                f"this worker cannot reach the MLflow tracking server at {uri} "
                f"(REFIT_MLFLOW_TRACKING_URI): {type(exc).__name__}: {exc}"
            ) from exc


def go_live(version: str, model, dataset) -> dict:
    """After a promotion: serving loads ``version`` now, then the live smoke check."""
    with_http_retries(reload_serving)(version)
    return with_http_retries(smoke_check)(version, model, dataset)


def report_links(run_id: str, version: str, flips: bool = False) -> str:
    from pipelines.judge import reports

    config = settings()
    return reports.links(
        config.mlflow_url,
        config.registered_model_name,
        run_id,
        version,
        config.accepted_dir,
        flips,
    )
