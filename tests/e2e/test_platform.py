"""`refit up` / `status` / `down` really start, answer and stop the MLflow and Prefect servers.

Runs the installed `refit` console script against a temporary workspace and free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e

# The console script of the environment under test, not whatever `refit` is on PATH.
REFIT = str(Path(sys.executable).parent / "refit")


def refit(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [REFIT, *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pid_records(env: dict[str, str]) -> dict[str, dict]:
    run_dir = Path(env["REFIT_WORKSPACE"]) / "run"
    return {p.stem: json.loads(p.read_text()) for p in run_dir.glob("*.pid")}


def group_alive(record: dict) -> list[int]:
    """Pids still alive of a server: every process carrying its tag (the server and its
    workers, whatever sessions they made)."""
    alive = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.environ().get("REFIT_SERVER_TAG") == record["tag"]
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                alive.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return alive


def wait_gone(pid: int, timeout: float = 10) -> None:
    """Until a killed process (reaped by init, not by us) has left the process table."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def platform_env(refit_env: dict[str, str]):
    """A refit environment whose servers are always stopped at the end, even on failure."""
    yield refit_env
    refit(refit_env, "down")


def test_up_status_down_lifecycle(platform_env: dict[str, str]) -> None:
    env = platform_env
    mlflow_url = f"http://127.0.0.1:{env['REFIT_MLFLOW_PORT']}"
    prefect_url = f"http://127.0.0.1:{env['REFIT_PREFECT_PORT']}"

    # A crash left stale pid files behind: `up` must not trust or signal them.
    run_dir = Path(env["REFIT_WORKSPACE"]) / "run"
    run_dir.mkdir(parents=True)
    for name in ("mlflow", "prefect"):
        (run_dir / f"{name}.pid").write_text(json.dumps({"pid": dead_pid(), "create_time": 1.0}))
    assert refit(env, "status").stdout.count("stale") == 2

    started = refit(env, "up")
    assert started.returncode == 0, started.stderr + started.stdout
    assert mlflow_url in started.stdout and prefect_url in started.stdout
    # Both UIs answer in a browser (with the logins `up` printed), and the APIs behind them
    # are healthy; without the login neither answers, and MLflow's write API refuses an
    # anonymous alias move.
    workspace = Path(env["REFIT_WORKSPACE"])
    logins = {
        url: tuple((workspace / name).read_text().strip().split(":", 1))
        for url, name in ((mlflow_url, "mlflow-auth"), (prefect_url, "prefect-auth"))
    }
    for url, login in logins.items():
        assert f"{':'.join(login)}" in started.stdout
        page = httpx.get(url, timeout=10, auth=login)
        assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(mlflow_url, timeout=10).status_code == 401
    alias = {"name": "refit-classifier", "alias": "champion", "version": "1"}
    moved = httpx.post(f"{mlflow_url}/api/2.0/mlflow/registered-models/alias", json=alias)
    assert moved.status_code == 401
    assert httpx.post(f"{prefect_url}/api/deployments/filter", json={}).status_code == 401
    assert httpx.get(f"{mlflow_url}/health").text.strip() == "OK"
    assert httpx.get(f"{prefect_url}/api/health").json() is True
    # Serving answers (its pages too) before any champion exists; the worker is healthy.
    serving_url = f"http://127.0.0.1:{env['REFIT_SERVING_PORT']}"
    assert "<html" in httpx.get(f"{serving_url}/try", timeout=10).text.lower()
    assert httpx.get(f"http://127.0.0.1:{env['REFIT_WORKER_PORT']}/health").is_success
    assert "Admin token:" in started.stdout

    first = pid_records(env)
    assert set(first) == {"mlflow", "prefect", "serving", "worker", "watcher"}
    assert refit(env, "status").stdout.count("healthy") == 5

    # A second `up` says so and starts nothing.
    again = refit(env, "up")
    assert again.returncode == 0
    assert again.stdout.count("already running") == 5
    assert pid_records(env) == first

    # The MLflow server crashes (its worker survives, holding the port): `up` cleans up
    # after it and restarts only MLflow.
    os.kill(first["mlflow"]["pid"], signal.SIGKILL)
    wait_gone(first["mlflow"]["pid"])
    assert "workers still running" in refit(env, "status").stdout
    restarted = refit(env, "up")
    assert restarted.returncode == 0, restarted.stderr + restarted.stdout
    second = pid_records(env)
    assert second["prefect"] == first["prefect"]
    assert second["mlflow"]["pid"] != first["mlflow"]["pid"]
    assert not group_alive(first["mlflow"])
    assert httpx.get(f"{mlflow_url}/health").is_success

    # Serving's arbiter is killed alone: its workers (process groups of their own) keep
    # the port; `refit status` says so and `refit down` still finds and stops them.
    serving = second["serving"]["pid"]
    assert [p for p in group_alive(second["serving"]) if p != serving]  # workers
    os.kill(serving, signal.SIGKILL)
    wait_gone(serving)
    assert group_alive(second["serving"])
    assert "workers still running" in refit(env, "status").stdout

    stopped = refit(env, "down")
    assert stopped.returncode == 0
    assert stopped.stdout.count("stopped") == 5
    assert "left behind" in stopped.stdout
    for record in second.values():
        assert not group_alive(record)
    assert pid_records(env) == {}
    assert refit(env, "status").stdout.count("stopped") == 5


def test_up_refuses_a_port_taken_by_someone_else(platform_env: dict[str, str]) -> None:
    env = platform_env
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["REFIT_PREFECT_PORT"])))
        squatter.listen()
        result = refit(env, "up")
    assert result.returncode == 1
    assert f"port {env['REFIT_PREFECT_PORT']}" in result.stderr
    assert "REFIT_PREFECT_PORT" in result.stderr
    assert pid_records(env) == {}  # nothing was started
