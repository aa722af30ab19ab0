"""The retrain run's reload step talks to every serving replica and is done only when all
answer with the new version; otherwise it names the ones that lag and why. (Replicas here
are small HTTP servers answering /admin/reload as serving does; in a subprocess, because
importing Prefect would fix its settings for the whole test session. The real replicas are
in tests/e2e/test_team.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def replica(version, error):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.dumps({"version": version, "error": error}).encode()
            self.send_response(500 if error else 200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"

import os
good = replica("7", None)
stale = replica("6", "cannot load v7: out of memory")
os.environ["REFIT_SERVING__REPLICAS"] = json.dumps([good, stale, "http://127.0.0.1:9"])
os.environ["REFIT_SERVING__ADMIN_TOKEN"] = "t"
from flows.common import reload_serving
try:
    reload_serving.fn("7")
    print(json.dumps({"raised": None}))
except RuntimeError as exc:
    print(json.dumps({"raised": str(exc), "good": good, "stale": stale}))
os.environ["REFIT_SERVING__REPLICAS"] = json.dumps([good])
from core.settings import get_settings
get_settings.cache_clear()
print(json.dumps({"all": reload_serving.fn("7")}))
"""


def test_reload_names_every_replica_that_lags(tmp_path) -> None:
    env = {**os.environ, "REFIT_WORKSPACE": str(tmp_path / "workspace")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    failed, passed = lines
    message = failed["raised"]
    assert message and message.startswith("not every replica serves v7")
    assert f"{failed['stale']} (keeps v6: cannot load v7: out of memory)" in message
    assert "http://127.0.0.1:9 (ConnectError" in message
    assert failed["good"] not in message
    assert passed["all"]["replicas"] == {failed["good"]: "7"}


REACH = """
import json, os, sys
from flows.common import reach_shared_servers
from core.settings import get_settings
results = {}
for name, env in json.loads(sys.argv[1]).items():
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        reach_shared_servers()
        results[name] = None
    except Exception as exc:
        results[name] = str(exc)
print(json.dumps(results))
"""


def test_a_worker_that_cannot_reach_a_shared_server_names_the_setting(tmp_path) -> None:
    from tests.conftest import free_port

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cases = {
        "store": {"REFIT_STORE_URL": "s3://refit-team/shared", "REFIT_STORE_ENDPOINT_URL": closed,
                  "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                  "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"},
        "mlflow": {"REFIT_STORE_URL": str(tmp_path / "store"),
                   "REFIT_MLFLOW_TRACKING_URI": closed},
    }  # fmt: skip
    env = {**os.environ, "REFIT_WORKSPACE": str(tmp_path / "workspace")}
    done = subprocess.run(
        [sys.executable, "-c", REACH, json.dumps(cases)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert "REFIT_STORE_URL" in said["store"] and closed in said["store"]
    assert "REFIT_MLFLOW_TRACKING_URI" in said["mlflow"] and closed in said["mlflow"]
