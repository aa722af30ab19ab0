"""Refit for a team on several hosts, on one machine: network namespaces joined by a bridge.

- ``srv`` (10.231.0.1): Postgres, an S3 API (moto), and `refit up` in team mode: MLflow on
  Postgres + S3, Prefect on Postgres, the drop-folder watcher, no worker, no serving; nginx
  in front of the serving replicas;
- ``w1``, ``w2``: `refit worker`, each with its own workspace and DVC repository;
- ``s1``, ``s2``: a serving replica each (`refit up` with everything else pointed at srv).

The bridge has an address of ours in the root namespace (10.231.0.254), so the test talks to
the hosts over it. Needs root (namespaces) and nginx. Used by tests/e2e/test_team.py and
bench/team.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import git_repo
from tests.live_platform import QUICK, TOKEN
from tests.servers import S3_CREDENTIALS, Postgres, S3Server, start_postgres, start_s3

PREFIX = "rf"  # namespace names: rf-srv, rf-w1, ...
SUBNET = "10.231.0"
BRIDGE = "rfbr0"
HOSTS = {"srv": 1, "w1": 2, "w2": 3, "s1": 4, "s2": 5}
PORTS = {"pg": 5432, "s3": 9000, "mlflow": 5000, "prefect": 4200, "lb": 8080}
SERVING_PORT = 3000
PREFECT_AUTH = "refit:team-prefect-secret"
MLFLOW_AUTH = "refit:team-mlflow-secret"


def unavailable() -> str | None:
    """Why the topology cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces (ip netns); CI runs as root"
    for tool in ("ip", "nsenter", "nginx", "runuser"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"needs {tool} (make test installs nginx as root)"
    return None


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def ns(host: str) -> str:
    return f"{PREFIX}-{host}"


def in_ns(host: str, command: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns(host)}", *command]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def make_network() -> None:
    remove_network()
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for host, number in HOSTS.items():
        name = ns(host)
        _ip("netns", "add", name)
        _ip("link", "add", f"{PREFIX}v{number}", "type", "veth", "peer", "name", "eth0",
            "netns", name)  # fmt: skip
        _ip("link", "set", f"{PREFIX}v{number}", "master", BRIDGE, "up")
        _ip("-n", name, "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")


def remove_network() -> None:
    for host, number in HOSTS.items():
        subprocess.run(["ip", "netns", "delete", ns(host)], capture_output=True)
        subprocess.run(["ip", "link", "delete", f"{PREFIX}v{number}"], capture_output=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


@dataclass
class Team:
    root: Path
    s3: S3Server | None = None
    postgres: Postgres | None = None
    nginx: subprocess.Popen | None = None
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # hosts `refit up`/`worker` ran on

    @property
    def prefect_api(self) -> str:
        return f"http://{address('srv')}:{PORTS['prefect']}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{address('srv')}:{PORTS['mlflow']}"

    @property
    def lb_url(self) -> str:
        return f"http://{address('srv')}:{PORTS['lb']}"

    def replica_url(self, host: str) -> str:
        return f"http://{address(host)}:{SERVING_PORT}"

    def refit(self, host: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        command = in_ns(host, [str(Path(sys.executable).parent / "refit"), *args])
        return subprocess.run(
            command, env=self.envs[host], capture_output=True, text=True, timeout=timeout
        )

    def client(self):
        """A context in which this process talks to the team's Prefect and MLflow (over the
        bridge); what it changed is put back after."""

        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        user, _, password = MLFLOW_AUTH.partition(":")
        mlflow_env = {
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_TRACKING_URI": self.mlflow_url,  # not the session's live platform
            "MLFLOW_REGISTRY_URI": self.mlflow_url,
        }

        @contextlib.contextmanager
        def context():
            saved = {k: os.environ.get(k) for k in mlflow_env}
            os.environ.update(mlflow_env)
            try:
                with temporary_settings(
                    updates={
                        PREFECT_API_URL: self.prefect_api,
                        PREFECT_API_AUTH_STRING: PREFECT_AUTH,
                    }
                ):
                    yield
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

        return context()

    def champion(self) -> str | None:
        from mlflow import MlflowClient

        try:
            return (
                MlflowClient(self.mlflow_url, self.mlflow_url)
                .get_model_version_by_alias("refit-classifier", "champion")
                .version
            )
        except Exception:
            return None

    def served_versions(self) -> dict[str, str | None]:
        versions = {}
        for host in ("s1", "s2"):
            try:
                versions[host] = httpx.get(f"{self.replica_url(host)}/model", timeout=10).json()[
                    "model"
                ]["version"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                versions[host] = None
        return versions

    def worker_pid(self, host: str) -> int:
        import json

        return json.loads((self.root / host / "workspace" / "run" / "worker.pid").read_text())[
            "pid"
        ]

    def kill_host_worker(self, host: str) -> None:
        """SIGKILL the worker of ``host`` and everything it started (its host died)."""
        import psutil

        worker = psutil.Process(self.worker_pid(host))
        for proc in [worker, *worker.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def down(host: str) -> None:
            try:
                self.refit(host, "down", timeout=120)
            except Exception as exc:  # keep stopping the others
                print(f"refit down on {host}: {exc}")

        with ThreadPoolExecutor(max_workers=len(HOSTS)) as pool:  # hosts stop side by side
            list(pool.map(down, self.started))
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(timeout=15)
        if self.s3 is not None:
            self.s3.stop()
        if self.postgres is not None:
            self.postgres.stop()
        remove_network()


def _env(team: Team, host: str, **extra: str) -> dict[str, str]:
    srv = address("srv")
    home = team.root / host
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REFIT_", "PREFECT_", "MLFLOW_"))
        },
        **S3_CREDENTIALS,
        "REFIT_WORKSPACE": str(home / "workspace"),
        "REFIT_CONFIG": str(home / "no-refit.toml"),
        "REFIT_HOST": address(host),
        "REFIT_STORE_URL": "s3://refit-team/shared",
        "REFIT_STORE_ENDPOINT_URL": f"http://{srv}:{PORTS['s3']}",
        "REFIT_PREFECT_AUTH": PREFECT_AUTH,
        "REFIT_MLFLOW_AUTH": MLFLOW_AUTH,
        "REFIT_SERVING__ADMIN_TOKEN": TOKEN,
        "REFIT_SERVING__PUBLIC_URL": f"http://{srv}:{PORTS['lb']}",
        "REFIT_SERVING__REPLICAS": f'["http://{address("s1")}:{SERVING_PORT}", '
        f'"http://{address("s2")}:{SERVING_PORT}"]',
        **QUICK,
        "REFIT_ORCHESTRATION__RUN_WORKER": "false",
        "REFIT_ORCHESTRATION__WATCH_DROP_FOLDER": "false",
        "REFIT_ORCHESTRATION__HEARTBEAT_S": "30",
        "REFIT_ORCHESTRATION__CRASHED_AFTER_S": "45",
        "REFIT_ORCHESTRATION__HTTP_RETRIES": "2",
        "REFIT_ORCHESTRATION__HTTP_RETRY_DELAY_S": "2",
        "COLUMNS": "200",
    }
    if host != "srv":
        env["REFIT_MLFLOW_TRACKING_URI"] = f"http://{srv}:{PORTS['mlflow']}"
        env["REFIT_PREFECT_API_URL"] = f"http://{srv}:{PORTS['prefect']}/api"
    return {**env, **extra}


NGINX = """
daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    client_max_body_size 100m;
    upstream serving {{
        server {s1}:{port} max_fails=1 fail_timeout=5s;
        server {s2}:{port} max_fails=1 fail_timeout=5s;
        keepalive 32;
    }}
    server {{
        listen {srv}:{lb};
        location / {{
            proxy_pass http://serving;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def start_team(root: Path) -> Team:
    """Build the network and start every server; the caller must call ``stop``."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # postgres (another user) reaches its folder inside
    team = Team(root)
    make_network()
    try:
        srv = address("srv")
        team.postgres = start_postgres(srv, PORTS["pg"], netns=ns("srv"), clients=f"{SUBNET}.0/24")
        for database in ("mlflow", "prefect"):
            team.postgres.createdb(database)
        team.s3 = start_s3(srv, PORTS["s3"], root / "moto.log", netns=ns("srv"))
        _wait_bucket(team)
        for host in HOSTS:
            (root / host).mkdir(exist_ok=True)
        team.envs["srv"] = _env(
            team,
            "srv",
            REFIT_MLFLOW_BACKEND_URI=team.postgres.url("psycopg2", "mlflow"),
            REFIT_PREFECT_DATABASE_URL=team.postgres.url("asyncpg", "prefect"),
            REFIT_MLFLOW_PORT=str(PORTS["mlflow"]),
            REFIT_PREFECT_PORT=str(PORTS["prefect"]),
            REFIT_MLFLOW_ALLOWED_HOSTS=f'["{srv}", "{srv}:{PORTS["mlflow"]}"]',
            REFIT_ORCHESTRATION__WATCH_DROP_FOLDER="true",
        )
        for host in ("w1", "w2"):
            team.envs[host] = _env(
                team, host, REFIT_DVC_REPO=str(git_repo(root / host / "repo")),
                REFIT_WORKER_PORT="4201",
            )  # fmt: skip
        for host in ("s1", "s2"):  # the replicas share this host's cores, as pods a node's
            team.envs[host] = _env(
                team, host, REFIT_SERVING_PORT=str(SERVING_PORT),
                REFIT_SERVING__PUBLIC_URL="",
                REFIT_SERVING__THREADS=str(max(1, len(os.sched_getaffinity(0)) // 2)),
            )  # fmt: skip
            team.envs[host].pop("REFIT_SERVING__PUBLIC_URL")
        _check(team.refit("srv", "up", timeout=300), "refit up on srv")
        team.started.append("srv")
        _check(team.refit("srv", "deploy", timeout=300), "refit deploy")
        conf = root / "nginx.conf"
        conf.write_text(NGINX.format(root=root, s1=address("s1"), s2=address("s2"),
                                     port=SERVING_PORT, srv=srv, lb=PORTS["lb"]))  # fmt: skip
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        errors = str(root / "nginx-error.log")
        team.nginx = subprocess.Popen(in_ns("srv", [nginx, "-c", str(conf), "-e", errors]))
        for host, args in (("w1", ["worker"]), ("w2", ["worker"]), ("s1", ["up"]), ("s2", ["up"])):
            _check(team.refit(host, *args, timeout=300), f"refit {args[0]} on {host}")
            team.started.append(host)
    except BaseException:
        team.stop()
        raise
    return team


def _wait_bucket(team: Team) -> None:
    """moto answers over the bridge; make the team's bucket."""
    deadline = time.monotonic() + 60
    while True:
        try:
            team.s3.bucket("refit-team")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
