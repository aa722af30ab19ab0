"""A person in the loop: challengers that wait for an approval before they go live.

``gate.approval`` says which do: ``auto`` (none: the gate's blessing promotes), ``manual``
(every challenger the gate did not refuse), ``when_inconclusive`` (those the evidence could
not decide; blessed ones go live on their own). A waiting version is registered and tagged
``approval = pending``; the registry (MLflow) is where it waits, so it outlives any worker or
server restart. Approving promotes it by the same compare-and-set as the gate: only over the
champion it was judged against, never over a person's rollback. Approvals, rejections and
timeouts (``gate.approval_timeout_h``) are entries of the promotion history.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from core import notify
from core.contract import (
    APPROVAL_DECIDED_TAG,
    APPROVAL_SINCE_TAG,
    APPROVAL_TAG,
    GATE_TAG,
    JUDGED_AGAINST_TAG,
    PARENT_TAG,
)
from core.notify import NotifyConfig
from core.policies import GatePolicy
from pipelines.judge.registry_client import RegistryError
from pipelines.judge.registry_moves import RegistryMoves

PENDING = "pending"


class NotAwaiting(RegistryError):
    """The version does not wait for a person (never did, or was decided already)."""


@dataclass(frozen=True)
class Waiting:
    """A version that waits for a person."""

    version: str
    outcome: str  # the gate's: passed (blessed) or inconclusive
    since: float  # epoch seconds
    champion: str | None  # the champion it was judged against

    def hours(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.since) / 3600


def judged_against(tags: dict[str, str]) -> str | None:
    """The champion a registered version was judged against (its parent, for versions
    registered before the gate recorded it), or None."""
    found = tags.get(JUDGED_AGAINST_TAG, tags.get(PARENT_TAG, "none"))
    return None if found == "none" else found


def needs_person(outcome: str, policy: GatePolicy) -> bool:
    """Whether a challenger with the gate's ``outcome`` waits for a person."""
    if policy.approval == "manual":
        return outcome != "refused"
    return policy.approval == "when_inconclusive" and outcome == "inconclusive"


def request(registry: RegistryMoves, version: str, now: float | None = None) -> None:
    """Mark ``version`` as waiting for a person."""
    registry.tag_version(version, APPROVAL_SINCE_TAG, str(now or time.time()))
    registry.tag_version(version, APPROVAL_TAG, PENDING)


def waiting(registry: RegistryMoves) -> list[Waiting]:
    """Every version that waits for a person, newest first."""
    return [
        Waiting(
            version,
            tags.get(GATE_TAG, "unknown"),
            float(tags.get(APPROVAL_SINCE_TAG, 0)),
            judged_against(tags),
        )
        for version, tags in registry.tagged(APPROVAL_TAG, PENDING)
    ]


def _pending(registry: RegistryMoves, version: str) -> Waiting:
    found = [w for w in waiting(registry) if w.version == version]
    if found:
        return found[0]
    tags = registry.version_tags(version)
    if APPROVAL_TAG not in tags:
        raise NotAwaiting(f"version {version} does not wait for an approval")
    decided = json.loads(tags.get(APPROVAL_DECIDED_TAG, "{}"))
    raise NotAwaiting(
        f"version {version} was already decided: {tags[APPROVAL_TAG]}"
        + (f" by {decided['who']} at {decided['when']} ({decided['reason']})" if decided else "")
    )


def _decide(registry: RegistryMoves, version: str, state: str, entry: dict) -> None:
    registry.tag_version(version, APPROVAL_DECIDED_TAG, json.dumps(entry))
    registry.tag_version(version, APPROVAL_TAG, state)


def approve(registry: RegistryMoves, version: str, reason: str, who: str | None = None) -> None:
    """Promote a waiting ``version``: only over the champion it was judged against.

    Raises:
        NotAwaiting: it does not wait (or was decided already).
        ChampionMoved: the champion moved since it was judged (it stays waiting: reject it,
            or judge it again with ``refit model register``).
    """
    found = _pending(registry, version)
    registry.promote(
        version,
        reason=f"approved: {reason}",
        action="approve",
        expected=found.champion,
        who=who,
    )
    entry = registry.history()[-1]
    _decide(registry, version, "approved", entry)


def reject(registry: RegistryMoves, version: str, reason: str, who: str | None = None) -> None:
    """Turn a waiting ``version`` down; the champion stays."""
    _pending(registry, version)
    entry = registry.note("reject", version, reason, who)
    _decide(registry, version, "rejected", entry)


def decide(
    registry: RegistryMoves,
    version: str,
    action: str,
    reason: str,
    timeout_h: float,
    notify_config: NotifyConfig | None = None,
    link: str | None = None,
    who: str | None = None,
) -> str:
    """What a person does with a waiting ``version`` (``action``: approve or reject), once
    the overdue ones have timed out; people are told. Returns the event: approved or
    rejected.

    Raises:
        NotAwaiting, ChampionMoved: as :func:`approve` and :func:`reject` say.
    """
    expire(registry, timeout_h, notify_config=notify_config)
    act, event = {"approve": (approve, "approved"), "reject": (reject, "rejected")}[action]
    act(registry, version, reason, who)
    if notify_config is not None:
        notify.send(notify_config, event, f"v{version} {event}", f"Reason: {reason}.", link)
    return event


def expire(
    registry: RegistryMoves,
    timeout_h: float,
    now: float | None = None,
    notify_config: NotifyConfig | None = None,
) -> list[str]:
    """Reject every version that waited longer than ``timeout_h`` (and tell people, with
    ``notify_config``); returns them."""
    expired = [w.version for w in waiting(registry) if w.hours(now) > timeout_h]
    for version in expired:
        why = f"no decision within {timeout_h:g} h"
        entry = registry.note("approval timed out", version, why, "refit")
        _decide(registry, version, "timed-out", entry)
        if notify_config is not None:
            notify.send(
                notify_config,
                "approval-timed-out",
                f"v{version}: approval timed out",
                f"No one approved or rejected version {version} ({why}): it is rejected, the "
                "champion stays.",
            )
    return expired
