"""Real shared servers for tests, started once per session: an S3 API (moto's server) and
PostgreSQL clusters (Debian's, run as the postgres user)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# moto accepts any credentials; boto, s3fs and DVC want some.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "refit-test",
    "AWS_SECRET_ACCESS_KEY": "refit-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def bucket(self, name: str) -> str:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **boto_credentials())
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def store(self, bucket: str):
        from core.objectstore import Store

        return Store(self.bucket(bucket), self.endpoint)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


def boto_credentials() -> dict:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def wait_http(url: str, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def start_s3(host: str, port: int, log: Path, netns: str | None = None) -> S3Server:
    """moto's S3 server (in memory) on host:port, optionally inside a network namespace."""
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", host, "-p", str(port)]
    if netns:
        command = ["nsenter", f"--net=/run/netns/{netns}", *command]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://{host}:{port}"
    if netns is None:
        wait_http(endpoint, process, "moto S3 server")
    return S3Server(endpoint, process)


@dataclass
class Postgres:
    data: Path
    port: int
    host: str
    socket_dir: Path

    def url(self, driver: str, database: str) -> str:
        return f"postgresql+{driver}://refit@{self.host}:{self.port}/{database}"

    def createdb(self, name: str) -> None:
        _as_postgres(
            ["createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "refit", name]
        )

    def stop(self) -> None:
        _as_postgres(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


def _as_postgres(command: list[str], netns: str | None = None) -> None:
    command = [_pg_bin(command[0]), *command[1:]]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    if netns:
        command = ["nsenter", f"--net=/run/netns/{netns}", *command]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")


def start_postgres(
    host: str, port: int, netns: str | None = None, clients: str = "127.0.0.1/32"
) -> Postgres:
    """A fresh cluster in a new folder under the system temp dir (owned by postgres when run
    as root: pytest's own temp dirs are closed to other users), trust auth. ``remove`` it
    after stopping."""
    root = Path(tempfile.mkdtemp(prefix="refit-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    _as_postgres(["initdb", "-D", str(data), "-U", "refit", "--auth=trust", "--no-sync"])
    with open(data / "pg_hba.conf", "a") as hba:  # trust the test's own hosts
        hba.write(f"host all all {clients} trust\n")
    options = f"-p {port} -k {root} -c listen_addresses={host} -c fsync=off"
    _as_postgres(
        ["pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o", options, "start"], netns
    )
    return Postgres(data, port, host, root)
