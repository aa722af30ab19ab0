"""The servers Refit runs, described: for each role (`refit up`, a worker host, serving)
the commands, environments, health URLs and start order of MLflow, Prefect, the worker,
the drop-folder watcher and BentoML serving. Nothing is started here (``refit.platform``
starts them)."""

from __future__ import annotations

import hashlib
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings, config_file, tool_environment


@dataclass(frozen=True)
class Service:
    """A background server: how to start it and how to tell it is healthy."""

    name: str
    title: str
    command: list[str]
    env: dict[str, str]
    url: str
    health_url: str | None  # None: no HTTP endpoint, healthy while its process lives
    port: int | None
    needs: tuple[str, ...] = ()  # services that must answer before this one starts
    prepare: tuple[str, ...] = ()  # a command that must succeed first (e.g. deploy)


SERVER_TAG = "REFIT_SERVER_TAG"


def _set(variable: str, value: str | None) -> dict[str, str]:
    """``{variable: value}`` when a value is configured, else nothing."""
    return {variable: value} if value else {}


def _bin(name: str) -> str:
    """A console script of the environment Refit runs in."""
    return str(Path(sys.executable).parent / name)


def services(settings: Settings, role: str = "up") -> list[Service]:
    """The servers a role runs here, in start order.

    ``up``: MLflow, Prefect and serving unless the settings point at shared ones, then a
    worker (after registering the deployments) and the drop-folder watcher, each unless
    switched off. ``worker`` (`refit worker` on a worker host): one worker of the pool."""
    config = settings.orchestration
    if role == "worker":
        return [worker_service(settings, deploy=False)]
    return [
        *([_mlflow_service(settings)] if settings.local_mlflow else []),
        *([_prefect_service(settings)] if settings.local_prefect else []),
        *([serving_service(settings)] if settings.local_serving else []),
        *([worker_service(settings, deploy=True)] if config.run_worker else []),
        *([_watcher_service(settings)] if config.watch_drop_folder else []),
    ]


def _local_needs(settings: Settings) -> tuple[str, ...]:
    return tuple(
        name
        for name, local in (("prefect", settings.local_prefect), ("mlflow", settings.local_mlflow))
        if local
    )


def _mlflow_service(settings: Settings) -> Service:
    command = [
        _bin("mlflow"), "server", "--host", settings.host, "--port", str(settings.mlflow_port),
        "--workers", "1", "--backend-store-uri", str(settings.mlflow_backend_uri),
        "--artifacts-destination", str(settings.mlflow_artifact_root),
        "--app-name", "basic-auth",
        *(["--allowed-hosts", ",".join(settings.mlflow_allowed_hosts)]
          if settings.mlflow_allowed_hosts else []),
    ]  # fmt: skip
    return Service(
        name="mlflow",
        title="MLflow tracking server + UI",
        command=command,
        env={
            **tool_environment(settings),
            **_mlflow_auth_env(settings),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # artifacts in an S3 store: the server alone talks to it (clients use its proxy)
            **_set("MLFLOW_S3_ENDPOINT_URL", settings.store_endpoint_url),
        },
        url=settings.mlflow_url,
        health_url=f"{settings.mlflow_url}/health",
        port=settings.mlflow_port,
    )


def _mlflow_auth_env(settings: Settings) -> dict[str, str]:
    """MLflow's basic-auth app: every request needs the credential (only ``/health`` and
    static files are open)."""
    auth = settings.mlflow_auth_string() or ""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(settings.workspace / "mlflow" / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": auth.partition(":")[2],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(f"csrf:{auth}".encode()).hexdigest(),
    }


def write_mlflow_auth_config(settings: Settings) -> None:
    """The basic-auth app's configuration; its user store lives beside MLflow's own."""
    path = Path(_mlflow_auth_env(settings)["MLFLOW_AUTH_CONFIG_PATH"])
    user = (settings.mlflow_auth_string() or "").partition(":")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{path.parent / 'basic_auth.db'}\nadmin_username = {user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a checked credential is cached for a minute: PBKDF2 on every request costs ~3x
        "auth_cache_ttl_seconds = 60\n"
    )
    path.chmod(0o600)


def _prefect_service(settings: Settings) -> Service:
    command = [
        _bin("prefect"), "server", "start", "--host", settings.host,
        "--port", str(settings.prefect_port), "--analytics-off",
    ]  # fmt: skip
    return Service(
        name="prefect",
        title="Prefect server + UI",
        command=command,
        env={
            **tool_environment(settings),
            "PREFECT_UI_API_URL": str(settings.prefect_api_url),
            **_set("PREFECT_API_DATABASE_CONNECTION_URL", settings.prefect_database_url),
        },
        url=settings.prefect_url,
        health_url=f"{settings.prefect_api_url}/health",
        port=settings.prefect_port,
    )


def worker_service(settings: Settings, deploy: bool) -> Service:
    """A worker of the process work pool: takes one flow run at a time and runs it in a child
    process with this host's settings. With ``deploy``, the deployments are registered first
    (`refit up`); a worker host's `refit worker` only joins the pool."""
    config = settings.orchestration
    name = config.worker_name or f"{socket.gethostname()}-{settings.host}-{settings.worker_port}"
    command = [
        _bin("prefect"), "worker", "start", "--pool", config.work_pool, "--name", name,
        "--limit", "1", "--with-healthcheck",
    ]  # fmt: skip
    return Service(
        name="worker",
        title=f"Prefect worker {name} (pool {config.work_pool})",
        command=command,
        env={
            **tool_environment(settings),
            **_refit_env(settings),
            "PREFECT_WORKER_WEBSERVER_HOST": settings.host,
            "PREFECT_WORKER_WEBSERVER_PORT": str(settings.worker_port),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(config.heartbeat_s),
            "PREFECT_WORKER_QUERY_SECONDS": str(config.worker_poll_s),
        },
        url=f"{settings.prefect_url}/work-pools/work-pool/{config.work_pool}",
        health_url=f"http://{settings.host}:{settings.worker_port}/health",
        port=settings.worker_port,
        needs=_local_needs(settings),
        prepare=(sys.executable, "-m", "flows.deployments") if deploy else (),
    )


def _watcher_service(settings: Settings) -> Service:
    return Service(
        name="watcher",
        title="Drop-folder watcher",
        command=[sys.executable, "-m", "flows.watcher"],
        env={**tool_environment(settings), **_refit_env(settings)},
        url=str(settings.incoming_dir),
        health_url=None,
        port=None,
        needs=_local_needs(settings),
    )


def _refit_env(settings: Settings) -> dict[str, str]:
    """A child process reads the same settings: same workspace, same config file."""
    return {
        "REFIT_WORKSPACE": str(settings.workspace),
        "REFIT_CONFIG": str(config_file().resolve()),
    }


def serving_service(settings: Settings) -> Service:
    """The BentoML server: the champion's API and the Try / Retrain pages."""
    return Service(
        name="serving",
        title="BentoML serving + pages",
        command=[
            _bin("bentoml"),
            "serve",
            "serving.service:Refit",
            "--host",
            settings.host,
            "--port",
            str(settings.serving_port),
            "--working-dir",
            str(PROJECT_ROOT),
        ],
        env={
            **tool_environment(settings),
            **_refit_env(settings),
            # The watcher retries on its own schedule; MLflow's 7 backed-off retries would
            # hold a reload for minutes while the tracking server starts.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        },
        url=settings.serving_url,
        health_url=f"{settings.serving_url}/livez",  # up before a champion exists
        port=settings.serving_port,
    )
