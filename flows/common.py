"""What every flow shares: the settings, asking serving to reload, the live smoke check,
and links into the MLflow UI for reports."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from refit.settings import Settings, apply_tool_environment


@lru_cache(maxsize=1)
def settings() -> Settings:
    loaded = Settings()
    apply_tool_environment(loaded)
    return loaded


def log():
    """The run's logger (shown in the Prefect UI), or a plain one outside a run."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("refit.flows")


def _retrying(fn):
    config = settings().orchestration
    return task(
        fn,
        name=fn.__name__.replace("_", " "),
        cache_policy=NO_CACHE,
        retries=config.http_retries,
        retry_delay_seconds=config.http_retry_delay_s,
    )


@_retrying
def reload_serving(version: str) -> dict:
    """Ask the serving server to load the new champion now (the watcher would within its
    poll interval). Fails after retries if serving is down; the registry stays as it is."""
    config = settings()
    token = config.admin_token()
    answer = httpx.post(
        f"{config.serving_url}/admin/reload",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    answer.raise_for_status()
    body = answer.json()
    if body["version"] != version:
        raise RuntimeError(f"serving loaded v{body['version']}, expected v{version}: {body}")
    return body


@_retrying
def smoke_check(version: str, model) -> dict:
    """Send holdout images to the live endpoint; compare with offline predictions."""
    import numpy as np

    from pipelines.dataset import evaluation_holdout, load_index
    from pipelines.predict import predict_proba
    from pipelines.train import images_from_index

    config = settings()
    rows = evaluation_holdout(load_index(config.dataset_dir))
    rows = rows.sample(min(len(rows), config.orchestration.smoke_images), random_state=0)
    images = images_from_index(config.dataset_dir, rows, model.input_size, model.class_names)
    offline = np.array(model.class_names)[predict_proba(model.model, images.x).argmax(axis=1)]
    files = [
        ("images", (path.name, (config.dataset_dir / path).read_bytes()))
        for path in map(Path, rows["path"])
    ]
    answer = httpx.post(
        f"{config.serving_url}/predict_batch", files=files, params={"top_k": 1}, timeout=120
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


def report_links(run_id: str, version: str) -> str:
    config = settings()
    base = config.mlflow_url
    name = config.registered_model_name
    return (
        f"### Links\n- MLflow run: {base}/#/runs/{run_id}\n"
        f"- Model version: {base}/#/models/{name}/versions/{version}\n"
        f"- Data reports: `{config.accepted_dir}`\n"
    )
