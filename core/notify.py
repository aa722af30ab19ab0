"""Notifications: tell people what Refit did, through Apprise (Slack, a generic JSON
webhook, email, Teams and the rest of Apprise's services).

``notify.urls`` lists Apprise URLs (``json://host:port/path`` for a generic JSON body,
``https://hooks.slack.com/services/...`` for Slack's incoming webhooks); set them in the
environment (``REFIT_NOTIFY__URLS``), as they carry secrets. Each message goes out from a
background thread, retried ``notify.retries`` times with a growing pause: a receiver that
is down or slow never fails or delays a run, and its failure is logged.
"""

from __future__ import annotations

import logging
import threading
import time

from pydantic import Field, SecretStr, model_validator

from core.policies import Section

log = logging.getLogger("refit.notify")

EVENTS = (
    "promoted",
    "refused",
    "inconclusive",
    "awaiting-approval",
    "approved",
    "rejected",
    "approval-timed-out",
    "run-failed",
    "drift-detected",
    "live-accuracy-worse",
    "rolled-back",
)


class NotifyConfig(Section):
    """Notifications (``core.notify``): who hears what Refit did."""

    urls: list[SecretStr] = Field(
        default_factory=list,
        description="Apprise URLs of the receivers: `json://host:port/path` (a generic JSON "
        "webhook), `https://hooks.slack.com/services/...` (Slack), or any Apprise service. "
        "They carry secrets: set them in the environment, `REFIT_NOTIFY__URLS='[\"...\"]'`.",
    )
    events: list[str] = Field(
        default_factory=lambda: list(EVENTS),
        description=f"What to tell them: any of {', '.join(EVENTS)}.",
    )
    retries: int = Field(default=3, ge=0, description="Further tries of a failed delivery.")
    timeout_s: float = Field(default=5.0, gt=0, description="Connect and read timeout per try.")

    @model_validator(mode="after")
    def _known_events(self) -> NotifyConfig:
        unknown = sorted(set(self.events) - set(EVENTS))
        if unknown:
            raise ValueError(f"notify.events: unknown {unknown}; known: {', '.join(EVENTS)}")
        return self


def send(
    config: NotifyConfig, event: str, title: str, body: str, url: str | None = None
) -> threading.Thread | None:
    """Send ``title`` and ``body`` (and a link, ``url``) to every configured receiver, in the
    background; returns the sending thread (None when nothing is configured for ``event``)."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}; one of {', '.join(EVENTS)}")
    if not config.urls or event not in config.events:
        return None
    text = f"{body}\n{url}" if url else body
    urls = [u.get_secret_value() for u in config.urls]
    thread = threading.Thread(
        target=_deliver,
        args=(urls, f"Refit: {title}", text, config.retries, config.timeout_s),
        name=f"refit-notify-{event}",
    )
    thread.start()
    return thread


def _deliver(urls: list[str], title: str, body: str, retries: int, timeout_s: float) -> None:
    import apprise

    for url in urls:
        target = apprise.Apprise()
        if not target.add(url):
            log.warning("notification not sent: %s is not a URL Apprise understands", _safe(url))
            continue
        for server in target:
            server.socket_connect_timeout = server.socket_read_timeout = timeout_s
        for attempt in range(retries + 1):
            if target.notify(body=body, title=title):
                break
            if attempt < retries:
                time.sleep(min(2**attempt, 30))
        else:
            log.warning("notification not delivered to %s after %d tries", _safe(url), retries + 1)


def _safe(url: str) -> str:
    """A receiver's URL without what may be a secret (its path and credentials)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…"
