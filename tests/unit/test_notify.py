"""Notifications through Apprise to a real local HTTP receiver: the message arrives with what
happened; a receiver that is down, failing or malformed is logged and never raises."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from pydantic import ValidationError

from core import notify
from core.notify import NotifyConfig
from tests.conftest import free_port


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []
    status = 200
    delay_s = 0.0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append({"path": self.path, "body": json.loads(body)})
        time.sleep(Receiver.delay_s)
        self.send_response(Receiver.status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.received, Receiver.status, Receiver.delay_s = [], 200, 0.0
    yield server.server_address[1]
    server.shutdown()


def config(*urls: str, **more) -> NotifyConfig:
    return NotifyConfig(urls=list(urls), retries=1, timeout_s=2, **more)


def test_a_json_webhook_gets_what_happened(receiver) -> None:
    sent = notify.send(
        config(f"json://127.0.0.1:{receiver}/hook"),
        "promoted",
        "v7 promoted to champion",
        "Gate: blessed against champion v6.",
        "http://127.0.0.1:5000/#/runs/abc",
    )
    sent.join(10)
    [message] = Receiver.received
    assert message["path"] == "/hook"
    assert message["body"]["title"] == "Refit: v7 promoted to champion"
    assert "blessed against champion v6" in message["body"]["message"]
    assert "http://127.0.0.1:5000/#/runs/abc" in message["body"]["message"]


def test_events_not_chosen_and_no_receivers_send_nothing(receiver) -> None:
    quiet = config(f"json://127.0.0.1:{receiver}/hook", events=["rolled-back"])
    assert notify.send(quiet, "promoted", "v7", "x") is None
    assert notify.send(config(), "promoted", "v7", "x") is None
    with pytest.raises(ValidationError, match="unknown"):
        config(events=["promotd"])


def test_a_receiver_down_failing_or_malformed_is_logged_never_raised(receiver, caplog) -> None:
    Receiver.status = 500
    down = f"json://127.0.0.1:{free_port()}/hook"
    failing = f"json://127.0.0.1:{receiver}/hook"
    with caplog.at_level(logging.WARNING, "refit.notify"):
        sent = notify.send(config(down, failing, "not a url"), "run-failed", "run", "it failed")
        sent.join(30)
    assert not sent.is_alive()
    assert len(Receiver.received) == 2  # the failing receiver was tried again
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("not delivered" in w for w in warnings) == 2
    assert any("not a URL Apprise understands" in w for w in warnings)
    assert not any("/hook" in w for w in warnings)  # paths (often secrets) stay out of logs


def test_a_receiver_slower_than_the_timeout_is_given_up_on_in_time(receiver, caplog) -> None:
    Receiver.delay_s = 5
    with caplog.at_level(logging.WARNING, "refit.notify"):
        sent = notify.send(
            NotifyConfig(urls=[f"json://127.0.0.1:{receiver}/hook"], retries=0, timeout_s=0.5),
            "drift-detected",
            "drift",
            "the log drifted",
        )
        sent.join(30)
    assert "not delivered" in caplog.text
