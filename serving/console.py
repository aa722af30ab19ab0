"""The console at ``/``: the champion, its history, the runs, what waits for a person and
the monitoring, from one JSON call (``GET /console/state``), and signing in and out.

Each part is read on its own: with MLflow or Prefect down, the parts that need it say so
(``unavailable``) and the rest still show. Read-only unless ``serving.console_public``: then
anyone who reaches the server may read it; acting always needs a sign-in or the token.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Form, Header, Query
from fastapi.responses import FileResponse, RedirectResponse

from core.settings import get_settings
from serving.auth import SESSION, UNAUTHORIZED, authorized, error, new_session

router = APIRouter()
WEB = Path(__file__).parent / "web"
PAGE = 20  # history events per page


@router.get("/", include_in_schema=False)
async def console_page():
    return FileResponse(WEB / "console.html")


@router.get("/signin", include_in_schema=False)
async def signin_page():
    return FileResponse(WEB / "signin.html")


@router.post("/signin", include_in_schema=False)
async def signin(token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"):
    """The admin token for a session cookie (HttpOnly, SameSite=Strict, expiring)."""
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    if not authorized(f"Bearer {token}"):
        return RedirectResponse(f"/signin?failed=1&next={quote(target)}", status_code=303)
    hours = get_settings().serving.session_hours
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION, new_session(hours), max_age=int(hours * 3600), httponly=True,
        samesite="strict", path="/",
    )  # fmt: skip
    return response


@router.post("/signout", include_in_schema=False)
async def signout():
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION, path="/", httponly=True, samesite="strict")
    return response


@router.get("/console/state", summary="The champion, history, runs, waiting and monitoring")
async def state(
    page: Annotated[int, Query(ge=1)] = 1,
    authorization: Annotated[str | None, Header()] = None,
):
    if not (get_settings().serving.console_public or authorized(authorization)):
        return error(401, UNAUTHORIZED)
    return await anyio.to_thread.run_sync(console_state, page)


def console_state(page: int = 1) -> dict:
    """Every part of the console; a part whose service is down is None and named in
    ``unavailable`` with why."""
    settings = get_settings()
    out: dict = {"unavailable": {}}
    try:
        out["runs"] = runs(settings)
    except Exception as exc:
        out["runs"] = None
        out["unavailable"]["prefect"] = f"Prefect could not be read: {str(exc)[:300]}"
    try:
        registry = _registry()
        versions = _versions(registry)
        out["champion"] = champion(registry, settings, versions)
        links = "prefect" not in out["unavailable"]  # no per-event wait on a Prefect down
        out["history"] = history(registry, settings, versions, page, links)
        out["waiting"] = waiting(registry, settings)
        out["monitoring"] = monitoring(registry)
    except Exception as exc:  # MLflow down or unreachable, or answering with an error
        out["unavailable"]["mlflow"] = f"MLflow could not be read: {str(exc)[:300]}"
        for part in ("champion", "history", "waiting", "monitoring"):
            out.setdefault(part, None)
    out["labels"] = label_queue(settings)
    return out


def _registry():
    """The registry as the console reads it: aliases, history, monitoring (no model code,
    no TensorFlow in the public worker)."""
    from pipelines.judge.registry_client import RegistryConfig
    from pipelines.judge.registry_moves import RegistryMoves
    from pipelines.loop.monitoring import MonitoringLog

    class Reads(RegistryMoves, MonitoringLog):
        pass

    return Reads(RegistryConfig.of(get_settings()))


def _versions(registry) -> dict[str, object]:
    """Every version by number, from one registry call (no run read per version: a
    registry with thousands of versions still answers at once)."""
    found = registry.client.search_model_versions(f"name='{registry.name}'")
    return {str(mv.version): mv for mv in found}


def wilson(successes: float, n: float) -> list[float] | None:
    """The 95% Wilson score interval of a proportion (None without images)."""
    from statsmodels.stats.proportion import proportion_confint

    if not n:
        return None
    low, high = proportion_confint(round(successes), round(n), alpha=0.05, method="wilson")
    return [float(low), float(high)]


def champion(registry, settings, versions: dict) -> dict | None:
    from core.contract import CHALLENGER_PREFIX, CLASS_NAMES_TAG, DATASET_VERSION_TAG

    version = registry.alias_version("champion")
    if version is None or version not in versions:
        return None
    mv = versions[version]
    metrics = registry.client.get_run(mv.run_id).data.metrics
    classes = json.loads(mv.tags.get(CLASS_NAMES_TAG, "[]"))
    accuracy = metrics.get(f"{CHALLENGER_PREFIX}accuracy")
    images = metrics.get(f"{CHALLENGER_PREFIX}images")
    per_class = []
    for name in classes:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        recall = metrics.get(f"{CHALLENGER_PREFIX}recall.{safe}")
        support = metrics.get(f"{CHALLENGER_PREFIX}support.{safe}")
        interval = wilson(recall * support, support) if None not in (recall, support) else None
        per_class.append({"class": name, "accuracy": _finite(recall), "images": support,
                          "interval": interval})  # fmt: skip
    live_since = next(
        (e["when"] for e in reversed(registry.history()) if e.get("version") == version), None
    )
    return {
        "version": version,
        "classes": classes,
        "accuracy": _finite(accuracy),
        "holdout_images": images,
        "interval": wilson(accuracy * images, images) if accuracy and images else None,
        "per_class": per_class,
        "dataset_version": mv.tags.get(DATASET_VERSION_TAG),
        "live_since": live_since or _iso(mv.creation_timestamp / 1000),
        "mlflow_run": f"{settings.mlflow_url}/#/experiments/-/runs/{mv.run_id}",
    }


def history(registry, settings, versions: dict, page: int = 1, prefect_links: bool = True) -> dict:
    """Every decision, newest first, paged: alias moves and notes from the registry's
    history, and the challengers the gate refused (which move nothing)."""
    from core.contract import GATE_TAG, SUBMISSION_TAG

    events = [{**e, "kind": e["action"]} for e in registry.history()]
    moved = {e["version"] for e in events}
    for version, mv in versions.items():
        outcome = mv.tags.get(GATE_TAG)
        if outcome in ("failed", "inconclusive") and version not in moved:
            events.append({"when": _iso(mv.creation_timestamp / 1000), "action": "refused",
                           "kind": "refused", "version": version, "who": "the gate",
                           "reason": f"gate {outcome}", "metrics": {}})  # fmt: skip
    events.sort(key=lambda e: e["when"], reverse=True)
    total = len(events)
    shown = events[(page - 1) * PAGE : page * PAGE]
    for e in shown:
        mv = versions.get(str(e["version"]))
        run = f"{settings.mlflow_url}/#/experiments/-/runs/{mv.run_id}" if mv else None
        e["mlflow_run"] = run
        submission = mv.tags.get(SUBMISSION_TAG) if mv and prefect_links else None
        e["prefect_run"] = _prefect_run(settings, submission)
        e["flips"] = f"/models/{e['version']}/negative-flips.png"
        e["metrics"] = {k: _finite(v) for k, v in (e.get("metrics") or {}).items()}
    return {"events": shown, "total": total, "page": page, "pages": max(1, math.ceil(total / PAGE))}


def _prefect_run(settings, submission: str | None) -> str | None:
    """The Prefect UI link of the retrain run that took ``submission`` (None: a version
    registered by hand, or Prefect not answering: the rest of the history still shows)."""
    from core import runs as flow_runs

    if not submission:
        return None
    try:
        run_id = flow_runs.find_submission_run(submission)
    except Exception:
        return None
    return f"{settings.prefect_url}/runs/flow-run/{run_id}" if run_id else None


def waiting(registry, settings) -> list[dict]:
    from pipelines.judge.approval import waiting as waiting_versions

    return [
        {"version": w.version, "gate": w.outcome, "judged_against": w.champion,
         "hours": round(w.hours(), 2)}
        for w in waiting_versions(registry)
    ]  # fmt: skip


def monitoring(registry) -> dict:
    """Drift checks over time and live accuracy on labelled production images."""
    drift = registry.check_history("drift.p_value")
    drifted = dict(registry.check_history("drift.drifted"))
    live = registry.check_history("live.champion_accuracy")
    return {
        "drift": [
            {"when": _iso(t), "p_value": _finite(p), "drifted": bool(drifted.get(t))}
            for t, p in drift[-60:]
        ],
        "live_accuracy": [{"when": _iso(t), "accuracy": _finite(a)} for t, a in live[-60:]],
    }


def runs(settings, limit: int = 8) -> dict:
    from core import runs as flow_runs
    from pipelines.data.submissions import Queue

    recent = flow_runs.recent(limit)
    return {
        "recent": [
            {**r.as_dict(), "url": f"{settings.prefect_url}/runs/flow-run/{r.id}"} for r in recent
        ],
        "pending": len(Queue.of(settings).pending()),
    }


def label_queue(settings) -> dict | None:
    """How many logged images wait for a label (None when the log cannot be read)."""
    from pipelines.loop import labelqueue, predlog

    try:
        store = settings.prediction_log_store()
        view = predlog.read_log(store, newest=settings.loop.queue_images)
        done = labelqueue.labelled_ids(store)
    except Exception:
        return None
    return {"logged": len(view), "unlabelled": sum(e["id"] not in done for e in view.entries)}


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
