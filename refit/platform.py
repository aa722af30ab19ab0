"""The local platform: start, stop and inspect Refit's background servers.

Each server runs as a child process in its own session with a pid file and a log file in the
workspace. A pid file records the process's start time as well as its pid, so a file left
behind by a crash (the pid dead, or reused by an unrelated process) is recognised as stale
and never leads to signalling a stranger. Stopping signals exactly the recorded process and
its own children.

This module does not print; the CLI renders what it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import httpx
import psutil

from core.settings import PROJECT_ROOT, Settings, config_file, tool_environment

STOP_GRACE_S = 15.0
SERVERS_LAST = {"prefect", "mlflow"}  # `refit down` stops what uses them first
HEALTH_POLL_S = 0.5
LOG_TAIL_LINES = 20


class PlatformError(RuntimeError):
    """A server could not be started or stopped; the message says which and why."""


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


class State(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "running, not answering"
    STOPPED = "stopped"
    STALE = "stopped (stale pid file)"
    ORPHANED = "crashed, its workers still running (refit down or up stops them)"


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: enough to recognise the exact process later."""

    pid: int
    create_time: float
    tag: str = ""  # in the environment of the server and of every process it starts

    def process(self) -> psutil.Process | None:
        """The live process this record describes, or None if it is gone or was reused."""
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.create_time) < 0.5
            return proc if same and proc.status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None


@dataclass(frozen=True)
class ServiceStatus:
    service: Service
    state: State
    pid: int | None


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
            **(
                {"MLFLOW_S3_ENDPOINT_URL": settings.store_endpoint_url}
                if settings.store_endpoint_url
                else {}
            ),
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


def _write_mlflow_auth_config(settings: Settings) -> None:
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
            **(
                {"PREFECT_API_DATABASE_CONNECTION_URL": settings.prefect_database_url}
                if settings.prefect_database_url
                else {}
            ),
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


def pid_file(settings: Settings, service: Service) -> Path:
    return settings.run_dir / f"{service.name}.pid"


def log_file(settings: Settings, service: Service) -> Path:
    return settings.log_dir / f"{service.name}.log"


def read_pid_record(path: Path) -> PidRecord | None:
    """The record in ``path``, or None if there is none or it is unreadable."""
    try:
        return PidRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers HTTP 2xx."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def _answers(service: Service) -> bool:
    return service.health_url is None or is_healthy(service.health_url)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def service_status(settings: Settings, service: Service) -> ServiceStatus:
    path = pid_file(settings, service)
    if not path.exists():
        return ServiceStatus(service, State.STOPPED, None)
    record = read_pid_record(path)
    if record is not None and record.process() is None and _group_members(record):
        return ServiceStatus(service, State.ORPHANED, record.pid)
    if record is None or record.process() is None:
        return ServiceStatus(service, State.STALE, record.pid if record else None)
    state = State.HEALTHY if _answers(service) else State.UNHEALTHY
    return ServiceStatus(service, state, record.pid)


def status(settings: Settings, role: str = "up") -> list[ServiceStatus]:
    """The state of every server of ``role``."""
    return [service_status(settings, s) for s in services(settings, role)]


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _spawn(settings: Settings, service: Service) -> PidRecord:
    log = log_file(settings, service)
    tag = f"{service.name}-{secrets.token_hex(8)}"
    with open(log, "ab") as out:
        out.write(f"\n--- refit up {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        out.flush()
        proc = subprocess.Popen(
            service.command,
            env={**os.environ, **service.env, SERVER_TAG: tag},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=settings.workspace,
            start_new_session=True,
        )
    record = PidRecord(proc.pid, psutil.Process(proc.pid).create_time(), tag)
    pid_file(settings, service).write_text(json.dumps(asdict(record)))
    return record


@dataclass(frozen=True)
class UpResult:
    service: Service
    pid: int
    started: bool  # False: it was already running


def up(
    settings: Settings, on_ready: Callable[[Service], None] = lambda s: None, role: str = "up"
) -> list[UpResult]:
    """Start every server that is not running and wait until all answer HTTP.

    Servers already running are left alone. Stale pid files are replaced. If a server fails
    to come up, the servers started by this call are stopped again and PlatformError says
    why (with the end of its log).
    """
    settings.ensure_workspace()
    if role == "up":  # a worker host uses the team's credentials, as configured
        settings.ensure_platform_secrets()
        _write_mlflow_auth_config(settings)
    results: list[UpResult] = []
    to_start: list[Service] = []
    for current in status(settings, role):
        if current.state in (State.HEALTHY, State.UNHEALTHY):
            results.append(UpResult(current.service, current.pid or 0, started=False))
        else:
            to_start.append(current.service)
    for service in to_start:
        _stop_and_forget(settings, service)
        if service.port is not None and port_in_use(settings.host, service.port):
            raise PlatformError(
                f"{service.title}: port {service.port} on {settings.host} is already used "
                f"by another process; stop it or choose another port "
                f"(REFIT_{service.name.upper()}_PORT)."
            )
    started: list[tuple[Service, PidRecord]] = []
    try:
        # In waves: a service starts once the services it needs answer.
        while len(started) < len(to_start):
            running = {s.name for s in (*[r.service for r in results], *[s for s, _ in started])}
            wave = [
                service
                for service in to_start
                if service not in [s for s, _ in started] and set(service.needs) <= running
            ]
            if not wave:
                raise PlatformError("services need each other in a cycle: " + str(to_start))
            for service in wave:
                _prepare(settings, service)
            spawned = [(service, _spawn(settings, service)) for service in wave]
            started += spawned
            _wait_healthy(settings, spawned, on_ready)
    except PlatformError:
        _rollback(settings, started)
        raise
    results += [UpResult(s, r.pid, started=True) for s, r in started]
    order = [s.name for s in services(settings, role)]
    return sorted(results, key=lambda r: order.index(r.service.name))


def _prepare(settings: Settings, service: Service) -> None:
    """Run a service's one-off step (e.g. registering the deployments), logged with it."""
    if not service.prepare:
        return
    log = log_file(settings, service)
    with open(log, "ab") as out:
        done = subprocess.run(
            list(service.prepare),
            env={**os.environ, **service.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=settings.workspace,
            timeout=settings.startup_timeout_s,
        )
    if done.returncode != 0:
        raise PlatformError(
            f"{service.title}: `{' '.join(service.prepare[-2:])}` failed. End of {log}:\n"
            f"{_log_tail(log)}"
        )


def _stop_and_forget(settings: Settings, service: Service) -> None:
    """Stop what a pid file records (or what its crashed server left behind); remove it."""
    path = pid_file(settings, service)
    record = read_pid_record(path)
    if record is not None:
        _stop_records([record])
    path.unlink(missing_ok=True)


def _rollback(settings: Settings, started: list[tuple[Service, PidRecord]]) -> None:
    """Stop the servers a failed `up` started, leaving the platform as it was."""
    for service, _ in started:
        _stop_and_forget(settings, service)


def _wait_healthy(
    settings: Settings,
    pending: list[tuple[Service, PidRecord]],
    on_ready: Callable[[Service], None],
) -> None:
    deadline = time.monotonic() + settings.startup_timeout_s
    waiting = list(pending)
    while waiting:
        for service, record in list(waiting):
            if record.process() is None:
                raise PlatformError(
                    f"{service.title} exited during start-up. End of "
                    f"{log_file(settings, service)}:\n{_log_tail(log_file(settings, service))}"
                )
            if _answers(service):
                waiting.remove((service, record))
                on_ready(service)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(s.title for s, _ in waiting)
            raise PlatformError(
                f"{names} did not answer within {settings.startup_timeout_s:.0f} s "
                f"(REFIT_STARTUP_TIMEOUT_S); see the logs in {settings.log_dir}."
            )
        if waiting:
            time.sleep(HEALTH_POLL_S)


def _group_members(record: PidRecord) -> list[psutil.Process]:
    """The processes of a server: the server and everything it started.

    Each server is started with a tag of its own in its environment, which every process
    it starts inherits, even one that makes a session of its own (BentoML's workers do);
    members must also be younger than the server. This finds workers orphaned by a crash
    of the server, and nothing else. (Records without a tag: the server's session.)
    """
    members = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if proc.info["create_time"] < record.create_time - 0.5:
                continue
            if record.tag:
                mine = proc.environ().get(SERVER_TAG) == record.tag
            else:
                mine = os.getsid(proc.pid) == record.pid
            if mine and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def _stop_records(records: list[PidRecord]) -> None:
    """SIGTERM each recorded server and its workers; SIGKILL what outlives the grace."""
    procs = [proc for record in records for proc in _group_members(record)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass(frozen=True)
class DownResult:
    service: Service
    pid: int | None
    was: State


def down(settings: Settings) -> list[DownResult]:
    """Stop the servers `refit up` or `refit worker` started (what uses Prefect and MLflow
    first, then those two) and remove their pid files."""
    chosen = services(settings, "up")
    chosen += [s for s in services(settings, "worker") if s.name not in {c.name for c in chosen}]
    statuses = [service_status(settings, s) for s in chosen]
    # Two waves, each stopped at once: what uses the servers, then the servers.
    for wave in (False, True):
        stopping = [s.service for s in statuses if (s.service.name in SERVERS_LAST) == wave]
        paths = [pid_file(settings, service) for service in stopping]
        _stop_records([r for r in map(read_pid_record, paths) if r is not None])
        for path in paths:
            path.unlink(missing_ok=True)
    return [DownResult(s.service, s.pid, s.state) for s in statuses]


@dataclass(frozen=True)
class SharedCheck:
    what: str
    where: str
    ok: bool
    detail: str = ""


def shared_checks(settings: Settings) -> list[SharedCheck]:
    """The shared servers the settings point at (not run here): do they answer?"""
    checks = []
    if not settings.local_mlflow:
        url = str(settings.mlflow_tracking_uri)
        ok = is_healthy(f"{url.rstrip('/')}/health") if url.startswith("http") else True
        checks.append(SharedCheck("MLflow tracking (REFIT_MLFLOW_TRACKING_URI)", url, ok))
    if not settings.local_prefect:
        url = str(settings.prefect_api_url)
        checks.append(
            SharedCheck("Prefect API (REFIT_PREFECT_API_URL)", url, is_healthy(f"{url}/health"))
        )
    if not settings.local_serving or settings.serving.replicas:
        for url in dict.fromkeys([settings.public_serving_url, *settings.serving_replicas()]):
            checks.append(SharedCheck("serving", url, is_healthy(f"{url}/readyz")))
    store = settings.shared_store()
    if store.remote:
        from core.objectstore import StoreError

        try:
            store.check()
            checks.append(SharedCheck("shared store (REFIT_STORE_URL)", store.describe(), True))
        except StoreError as exc:
            checks.append(SharedCheck("shared store", store.describe(), False, str(exc)))
    return checks
