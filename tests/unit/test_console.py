"""Sessions and the console's parts, in process: a valid session acts as the token, a
forged, expired or foreign one does not, a cross-site POST with a session is refused before
the route runs, /metrics follows its setting, and with MLflow and Prefect down the console
names what is unavailable and still answers."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Header
from fastapi.testclient import TestClient

from core.settings import get_settings
from serving import console
from serving.auth import SESSION, MetricsGuard, Sessions, _sign, authorized, new_session

TOKEN = "unit-token"


@pytest.fixture(autouse=True)
def settings(monkeypatch, tmp_path):
    monkeypatch.setenv("REFIT_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("REFIT_SERVING__ADMIN_TOKEN", TOKEN)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def app() -> TestClient:
    inner = FastAPI()
    acted = []

    @inner.post("/act")
    def act(authorization: str | None = Header(None)):
        if not authorized(authorization):
            return {"done": False}
        acted.append(1)
        return {"done": True}

    @inner.get("/metrics")
    def metrics():
        return {"metrics": 1}

    inner.add_middleware(Sessions)
    inner.add_middleware(MetricsGuard)
    client = TestClient(inner, base_url="http://refit.local:3000")
    client.acted = acted
    return client


def test_a_session_acts_as_the_token_only_when_valid_and_same_site() -> None:
    client = app()
    valid = new_session(hours=1)
    assert client.post("/act").json() == {"done": False}
    assert client.post("/act", cookies={SESSION: valid}).json() == {"done": True}
    own = {"Origin": "http://refit.local:3000"}
    assert client.post("/act", cookies={SESSION: valid}, headers=own).json() == {"done": True}
    foreign = client.post("/act", cookies={SESSION: valid}, headers={"Origin": "http://evil.test"})
    assert foreign.status_code == 403 and "cross-site" in foreign.json()["error"]
    assert len(client.acted) == 2  # the refused one never reached the route
    expired = f"1000.{_sign(TOKEN, 1000)}"
    forged = f"9999999999.{_sign('another-token', 9999999999)}"
    for bad in (expired, forged, "garbage", "9999999999."):
        assert client.post("/act", cookies={SESSION: bad}).json() == {"done": False}
    # a wrong bearer token is not rescued by a valid session: the header wins
    wrong = client.post("/act", cookies={SESSION: valid}, headers={"Authorization": "Bearer x"})
    assert wrong.json() == {"done": False}


def test_metrics_follow_their_setting(monkeypatch) -> None:
    assert app().get("/metrics").status_code == 200
    monkeypatch.setenv("REFIT_SERVING__METRICS_PUBLIC", "false")
    get_settings.cache_clear()
    client = app()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", cookies={SESSION: new_session(hours=1)}).status_code == 200


def test_with_mlflow_and_prefect_down_the_console_names_them_and_answers(monkeypatch) -> None:
    monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    get_settings.cache_clear()

    def prefect_down(settings):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(console, "runs", prefect_down)
    state = console.console_state()
    assert set(state["unavailable"]) == {"mlflow", "prefect"}
    assert "MLflow could not be read" in state["unavailable"]["mlflow"]
    assert "127.0.0.1:9" in state["unavailable"]["mlflow"]  # says which server
    assert state["champion"] is None and state["history"] is None and state["runs"] is None
    assert state["labels"] == {"logged": 0, "unlabelled": 0}  # the log still reads


def test_the_wilson_interval_is_statsmodels_and_holds_the_estimate() -> None:
    low, high = console.wilson(90, 100)
    assert low < 0.9 < high and round(low, 4) == 0.8256 and round(high, 4) == 0.9448
    assert console.wilson(0, 0) is None
