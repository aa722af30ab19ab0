"""The dataset lock that cannot be taken is one readable error naming the setting: here a
server that refuses every credential stands in for another workspace's Prefect server."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

PROBE = """
from core.settings import apply_tool_environment, get_settings
from flows.locks import LockError, dataset_writer
settings = get_settings()
apply_tool_environment(settings)
try:
    with dataset_writer(settings):
        print("HELD")
except LockError as exc:
    print("LOCKERROR", exc)
"""


class Refuses(http.server.BaseHTTPRequestHandler):
    def _refuse(self) -> None:
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "Unauthorized"}')

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, *args) -> None:
        pass


def test_a_refused_credential_names_the_setting_not_a_traceback(tmp_path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "REFIT_WORKSPACE": str(tmp_path / "ws"),
        "REFIT_PREFECT_API_URL": f"http://127.0.0.1:{server.server_port}/api",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        server.shutdown()
    assert "LOCKERROR" in done.stdout, done.stdout + done.stderr
    assert "refused the credential" in done.stdout
    assert "REFIT_PREFECT_API_URL" in done.stdout and "REFIT_PREFECT_AUTH" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
