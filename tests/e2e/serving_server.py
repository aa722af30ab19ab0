"""A real `bentoml serve` of serving.service:Refit on a free port, over a sqlite MLflow registry
in a temp dir, with tiny models registered through the real pipelines code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"


@dataclass
class ServingServer:
    url: str
    process: subprocess.Popen
    log: Path
    tracking_uri: str
    artifacts: str

    def registry(self):
        from pipelines.judge.registry import Registry
        from pipelines.judge.registry_client import RegistryConfig

        return Registry(
            RegistryConfig(self.tracking_uri, self.tracking_uri, "refit-classifier", self.artifacts)
        )

    def reload(self) -> httpx.Response:
        return httpx.post(
            f"{self.url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_serving(tmp: Path, **settings: str) -> ServingServer:
    """Start the server and wait until it answers /livez (a champion is not required)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # Create the registry's tables now: serving's two workers would otherwise both migrate
    # the fresh sqlite file at once, and one of them can fail (seen as a server that never
    # answers). A registry behind an MLflow server, as `refit up` runs it, has no such race.
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).search_experiments()
    env = {
        **os.environ,
        "REFIT_WORKSPACE": str(tmp / "workspace"),
        "REFIT_MLFLOW_TRACKING_URI": tracking_uri,
        "REFIT_SERVING__ADMIN_TOKEN": TOKEN,
        # the tests reload explicitly; a watcher polling every few seconds raced them (it
        # could load a new champion first, so the reload answered "unchanged")
        "REFIT_SERVING__POLL_INTERVAL_S": "3600",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        **{f"REFIT_SERVING__{k.upper()}": v for k, v in settings.items()},
    }
    log = tmp / "serving.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *(str(Path(sys.executable).parent / "bentoml"), "serve", "serving.service:Refit"),
                *("--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            start_new_session=True,
        )
    server = ServingServer(f"http://127.0.0.1:{port}", process, log, tracking_uri, str(tmp / "a"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/livez", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"bentoml serve did not answer in 120 s:\n{log.read_text()[-3000:]}")


def wait_ready(server: ServingServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"not ready:\n{server.log.read_text()[-3000:]}")
