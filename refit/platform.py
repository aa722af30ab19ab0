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
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import httpx
import psutil

from core.settings import Settings
from refit.services import SERVER_TAG, Service, services, write_mlflow_auth_config

STOP_GRACE_S = 15.0


SERVERS_LAST = {"prefect", "mlflow"}  # `refit down` stops what uses them first


HEALTH_POLL_S = 0.5


LOG_TAIL_LINES = 20


class PlatformError(RuntimeError):
    """A server could not be started or stopped; the message says which and why."""


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
        write_mlflow_auth_config(settings)
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
