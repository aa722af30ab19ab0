"""A person in the loop on the live platform: with gate.approval = manual, challengers wait
through a worker and an MLflow restart; one is approved from the CLI and goes live, one is
rejected, one times out; a real local HTTP receiver hears each of it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from tests.e2e.test_faults import _kill_tree, server_pid
from tests.e2e.test_orchestration import outcome, submit
from tests.live_platform import COLOURS, SETTLE_S, LivePlatform, ensure_champion, wait_for

pytestmark = pytest.mark.e2e


class Receiver(BaseHTTPRequestHandler):
    titles: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.titles.append(f"{body['title']} | {body['message']}")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def heard(text: str) -> bool:
    return any(text in title for title in Receiver.titles)


def test_manual_approval_waits_survives_restarts_and_a_person_decides(live: LivePlatform) -> None:
    champion = ensure_champion(live)
    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    config = live.root / "no-refit.toml"  # the platform's REFIT_CONFIG: read by each run
    config.write_text(
        f'[gate]\napproval = "manual"\n\n[notify]\n'
        f'urls = ["json://127.0.0.1:{receiver.server_address[1]}/hook"]\n'
    )
    try:
        batches = [live.batch(f"asks-{i}", COLOURS[:3], 8, seed=60 + i) for i in range(3)]
        subs = [submit(live, batch) for batch in batches]
        for sub in subs:
            wait_for(lambda sub=sub: outcome(live, sub)["status"] == "done", 600, f"{sub} judged")
        judged = [outcome(live, s) for s in subs]
        assert {o["outcome"] for o in judged} == {"awaiting-approval"}, judged
        versions = [outcome(live, s)["detail"].split()[0].lstrip("v") for s in subs]
        assert live.champion() == champion  # nothing went live on its own
        wait_for(lambda: all(heard(f"v{v} waits for your approval") for v in versions), 30,
                 "the awaiting-approval notifications")  # fmt: skip

        # The worker and MLflow die and come back: the challengers still wait.
        for name in ("worker", "mlflow"):
            _kill_tree(server_pid(live, name))
        assert live.refit("up", timeout=300).returncode == 0
        listed = live.refit("model", "waiting")
        rows = {line.split("│")[1].strip() for line in listed.stdout.splitlines() if "│" in line}
        assert listed.returncode == 0 and set(versions) <= rows, listed.stdout

        first, second, third = versions
        refused = live.refit("model", "approve", "999", "--reason", "x")
        assert refused.returncode == 1 and "has no version 999" in refused.stderr
        approved = live.refit("model", "approve", first, "--reason", "checked the flips")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert live.champion() == first
        wait_for(lambda: live.served_version() == first, SETTLE_S, f"serving to load v{first}")
        twice = live.refit("model", "approve", first, "--reason", "again")
        assert twice.returncode == 1 and "already decided: approved" in twice.stderr
        moved = live.refit("model", "approve", second, "--reason", "judged against the old one")
        assert moved.returncode == 1 and f"as when version {second} was judged" in moved.stderr
        rejected = live.refit("model", "reject", second, "--reason", "superseded")
        assert rejected.returncode == 0 and live.champion() == first

        timeout = config.read_text().replace("[gate]\n", "[gate]\napproval_timeout_h = 0.0001\n")
        config.write_text(timeout)
        expired = live.refit("model", "waiting")
        assert f"Version {third}: approval timed out" in expired.stdout, expired.stdout
        history = live.refit("model", "history").stdout
        assert "approve" in history and "reject" in history and "approval timed out" in history
        for title in (f"v{first} approved", f"v{second} rejected", f"v{third}: approval timed out"):
            wait_for(lambda title=title: heard(title), 30, title)
    finally:
        config.unlink(missing_ok=True)
        receiver.shutdown()
