"""Live accuracy: the champion and the version before it on production ground truth, and the
rollback when the champion is worse.

The ground truth is the production holdout (:mod:`pipelines.judge.shadow`): logged images
people labelled on the Label page and that no model trained on, so neither version is
flattered. Both versions answer the same images; each check is a run of the monitoring
experiment (``live.*`` metrics over time). With at least ``loop.rollback_min_labels`` of
them and evidence the champion is worse (the paired difference's upper bound under zero),
people are told, and with ``loop.auto_rollback`` the champion goes back to ``previous``
(recorded as ``auto-rollback``). Hysteresis: one automatic rollback per promotion, so two
versions cannot swap back and forth; after it, only a promotion (the gate or a person)
arms the check again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from core import notify
from core.contract import CHAMPION, PREVIOUS
from core.notify import NotifyConfig
from pipelines.judge import stats
from pipelines.judge.registry import Registry
from pipelines.judge.shadow import compare, read_sample

AUTO_ROLLBACK = "auto-rollback"  # the history action of a rollback this check made


@dataclass
class LiveAccuracy:
    status: str  # checked | no-previous | too-few | failed
    message: str
    champion: str | None = None
    previous: str | None = None
    test: stats.PairedTest | None = None  # the champion vs the previous version, paired
    worse: bool = False  # evidence the champion is worse, on enough labels
    rolled_back: bool = False
    run_id: str | None = None


def check(
    registry: Registry,
    log_store,
    min_labels: int,
    alpha: float,
    auto_rollback: bool,
    notify_config: NotifyConfig | None = None,
) -> LiveAccuracy:
    """Pair the champion with ``previous`` on the production holdout; log the check; tell
    people (``notify_config``) and roll back (``auto_rollback``) when the champion is worse
    on at least ``min_labels``."""
    champion, previous = registry.alias_version(CHAMPION), registry.alias_version(PREVIOUS)
    if champion is None or previous is None:
        return LiveAccuracy("no-previous", "no previous version to compare the champion with")
    sample = read_sample(log_store, newest=0)
    found = compare(registry.load(previous), registry.load(champion), sample, alpha)
    test = found.labelled
    if test is None:
        notes = "".join(f"; {note}" for note in found.notes)
        return LiveAccuracy(
            "too-few", f"no labelled production images yet{notes}", champion, previous
        )
    enough = test.n >= min_labels
    worse = enough and test.high < 0
    run_id = registry.log_check(
        f"live accuracy v{champion} {time.strftime('%Y-%m-%d %H:%M')}",
        {
            "live.champion_accuracy": found.challenger_accuracy,
            "live.previous_accuracy": found.champion_accuracy,
            "live.difference": test.difference,
            "live.labelled": float(test.n),
            "live.p_worse": test.p_worse,
        },
        {"model_version": champion, "check": "live-accuracy", "worse": str(worse).lower()},
        {},
    )
    said = (
        f"champion v{champion} {found.challenger_accuracy:.4f} vs v{previous} "
        f"{found.champion_accuracy:.4f} on labelled production images: {test.summary()}"
        + "".join(f"; {note}" for note in found.notes)
    )
    if not enough:
        said += f"; fewer than loop.rollback_min_labels = {min_labels}: no verdict"
    status = "checked" if enough else "too-few"
    result = LiveAccuracy(status, said, champion, previous, test, worse, run_id=run_id)
    if worse and auto_rollback:
        history = registry.history()
        if history and history[-1]["action"] == AUTO_ROLLBACK:
            result.message += (
                f"; not rolled back: v{champion} is itself the result of an automatic "
                "rollback (one per promotion, so versions cannot flap)"
            )
        else:
            registry.rollback(f"live accuracy: {test.summary()}", action=AUTO_ROLLBACK)
            result.rolled_back = True
            result.message += f"; rolled back to v{previous}"
    if worse and notify_config is not None:
        title = f"v{champion} is worse than v{previous} on production labels"
        notify.send(notify_config, "live-accuracy-worse", title, result.message)
        if result.rolled_back:
            notify.send(notify_config, "rolled-back", f"rolled back to v{previous}", result.message)
    return result
