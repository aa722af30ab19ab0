"""The loop on the live platform: real serving logs what it answers (image, version,
top-k, features), a real drift check over that log finds colour inversion and logs to
MLflow, the drift deployment runs on the worker, the label queue exports a skeleton that
the real intake takes back, and labels for images the log no longer holds change nothing."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import coloured_images
from tests.live_platform import (
    COLOURS,
    RUN_TIMEOUT_S,
    SETTLE_S,
    TOKEN,
    LivePlatform,
    ensure_champion,
    wait_for,
)

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _in_process(live: LivePlatform, monkeypatch) -> None:
    """This process's settings as the platform's (TensorFlow is loaded here already, so a
    command runs in seconds rather than paying a fresh interpreter's imports)."""
    from core.settings import get_settings

    for name, value in live.env.items():
        if name.startswith("REFIT_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def _cli(live: LivePlatform, monkeypatch, *args: str):
    """A `refit` command run in this process, as typed."""
    from typer.testing import CliRunner

    from refit.cli import app

    _in_process(live, monkeypatch)
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_serving_logs_answers_and_the_drift_check_finds_an_inversion(live, monkeypatch) -> None:
    from core import runs
    from pipelines.judge.registry import Registry
    from pipelines.judge.registry_client import RegistryConfig
    from pipelines.loop import monitor

    version = ensure_champion(live)
    images = coloured_images(COLOURS[:3], 14, seed=40)
    truth = {}
    for pixels, label in [*zip(images.x, images.y, strict=True),
                          *zip(255 - images.x, images.y, strict=True)]:  # fmt: skip
        data = _png(pixels)
        answer = httpx.post(f"{live.serving_url}/predict", files={"image": ("x.png", data)})
        assert answer.status_code == 200, answer.text
        truth[_id(data)] = COLOURS[label]
    store, _ = live.prediction_log()
    view = wait_for(
        lambda: (
            (v := live.prediction_log()[1]) and set(truth) <= {e["id"] for e in v.entries} and v
        ),
        SETTLE_S,
        "the background writer to log every answer",
    )
    entry = next(e for e in view.entries if e["id"] in truth)
    assert entry["version"] == version and entry["labels"][0] in COLOURS
    assert view.features.shape[1] > 0 and view.unreadable == 0

    url = f"http://127.0.0.1:{live.env['REFIT_MLFLOW_PORT']}"
    registry = Registry(RegistryConfig(url, url, "refit-classifier"))
    check = monitor.check_live(registry, store, images=len(images), alpha=0.01)  # the inverted
    assert check.status == "checked" and check.drifted, check.message
    run = registry.client.get_run(check.run_id)
    assert run.data.metrics["drift.drifted"] == 1.0 and run.data.tags["model_version"] == version
    logged = {a.path for a in registry.client.list_artifacts(check.run_id)}
    assert {"drift.json", "drift-history.png", "most-drifted.png"} <= logged

    shown = _cli(live, monkeypatch, "drift")  # the CLI: the same check, for people
    assert shown.exit_code == 0 and "MMD" in shown.output and "MLflow:" in shown.output
    flow_run = runs.start("drift/drift", {})  # the scheduled deployment, run now on the worker
    final = runs.follow(flow_run, lambda view: None, timeout_s=RUN_TIMEOUT_S)
    assert final.state == "COMPLETED", final.message
    assert "Live accuracy" in final.report  # the same run checks the champion's live accuracy


def test_on_drift_retrain_adds_the_automation_and_event_removes_it(live, monkeypatch) -> None:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    from core.settings import get_settings
    from flows.deployments import DRIFT_RETRAIN, ensure_drift_automation
    from flows.drift import DRIFTED

    _in_process(live, monkeypatch)
    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name("retrain/retrain").id
    monkeypatch.setenv("REFIT_LOOP__ON_DRIFT", "retrain")
    get_settings.cache_clear()
    assert ensure_drift_automation(get_settings(), retrain)
    made = Automation.read(name=DRIFT_RETRAIN)
    assert DRIFTED in made.trigger.expect and made.actions[0].deployment_id == retrain
    monkeypatch.setenv("REFIT_LOOP__ON_DRIFT", "event")
    get_settings.cache_clear()
    assert not ensure_drift_automation(get_settings(), retrain)
    with pytest.raises(ValueError):
        Automation.read(name=DRIFT_RETRAIN)


def _validate(live: LivePlatform, batch: Path, monkeypatch):
    """What `refit data validate` does, in this process (TensorFlow is loaded already)."""
    from core.settings import get_settings
    from pipelines import workspace

    _in_process(live, monkeypatch)
    return workspace.check_batch(get_settings(), batch, progress=lambda m: None)


def _id(data: bytes) -> str:
    from pipelines.loop.predlog import image_id

    return image_id(data)


def test_the_label_queue_exports_a_batch_the_intake_takes_back(
    live, tmp_path: Path, monkeypatch
) -> None:
    ensure_champion(live)
    _, view = live.prediction_log()
    if len(view) < 10:  # run alone: give the log something
        for pixels in coloured_images(COLOURS[:3], 5, seed=41).x:
            httpx.post(f"{live.serving_url}/predict", files={"image": ("x.png", _png(pixels))})
        wait_for(lambda: len(live.prediction_log()[1]) >= 10, SETTLE_S, "the log to fill")
    out = tmp_path / "next.zip"
    done = _cli(live, monkeypatch, "label", "next", "--n", "100000", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "Asked for 100000; the log holds only" in done.output
    with zipfile.ZipFile(out) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
        assert rows and all(r["label"] == r["guess"] for r in rows)
        assert all(archive.read(r["filename"]) for r in rows)
    checked = _validate(
        live, out, monkeypatch
    )  # the real intake check, examined by the real champion
    assert checked.report.n_images == len(rows) and checked.report.champion_version
    assert not [r for r in checked.report.failed_rules if r.rule != "min_images_per_class"]

    # labels for an image the log no longer holds: refused, nothing submitted
    pending = len(live.queue().pending())
    gone = "0" * 64
    refused = httpx.post(
        f"{live.serving_url}/retrain/labels", json={"labels": {gone: "red"}}, headers=AUTH
    )
    assert refused.status_code == 409 and "no longer in the prediction log" in refused.text
    assert len(live.queue().pending()) == pending
    anonymous = httpx.get(f"{live.serving_url}/label/queue")
    assert anonymous.status_code == 401
    for route in ("groups", f"like?seed={gone}"):
        assert httpx.get(f"{live.serving_url}/label/{route}").status_code == 401
    absent = httpx.get(f"{live.serving_url}/label/like?seed={gone}", headers=AUTH)
    assert absent.status_code == 400 and "is not in the prediction log" in absent.text
    hostile = httpx.get(f"{live.serving_url}/label/like?seed=../../etc", headers=AUTH)
    assert hostile.status_code == 400 and "not an image id" in hostile.text
