"""Watch production: the live drift check on the prediction log (the ``drift`` deployment
runs it hourly; ``refit drift`` at once).

It compares the newest log entries of the serving champion with that version's training
features, logs the check to MLflow's ``<model>-monitoring`` experiment (metrics over time,
a history plot, the most drifted images as a thumbnail grid) and says what it found.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from pipelines.loop import predlog
from pipelines.loop.drift import DriftResult, compare


@dataclass
class LiveCheck:
    """One check of the live log."""

    status: str  # "checked", "no-champion", "no-reference" or "no-data"
    message: str
    version: str | None = None
    result: DriftResult | None = None
    unreadable: int = 0  # log lines that could not be read (cut by a crash), skipped
    run_id: str | None = None

    @property
    def drifted(self) -> bool:
        return self.result is not None and self.result.drifted


def check_live(
    registry, log_store, images: int, alpha: float, permutations: int = 200
) -> LiveCheck:
    """Drift of the champion's newest ``images`` logged predictions from its training images."""
    from core.contract import CHAMPION
    from pipelines.loop.features import TrainingFeatures

    version = registry.alias_version(CHAMPION)
    if version is None:
        return LiveCheck("no-champion", "no champion yet: nothing serves, nothing to check")
    data = registry.training_features(version)
    if data is None:
        return LiveCheck(
            "no-reference",
            f"champion v{version} has no training features yet (it was registered before "
            "Refit kept them): the next version registered keeps them",
            version,
        )
    reference = TrainingFeatures.from_bytes(data)
    view = predlog.read_log(log_store, version=version, newest=images)
    skipped = f" ({view.unreadable} unreadable log lines skipped)" if view.unreadable else ""
    if len(view) < 2:
        return LiveCheck(
            "no-data",
            f"the prediction log holds {len(view)} answers of champion v{version}: too few to "
            f"compare{skipped}",
            version,
            unreadable=view.unreadable,
        )
    top1 = [e["labels"][0] for e in view.entries]
    confidence = np.array([e["probs"][0] for e in view.entries])
    result = compare(reference, view.features, top1, confidence, alpha, permutations)
    run_id = registry.log_check(
        f"drift v{version} {time.strftime('%Y-%m-%d %H:%M')}",
        result.metrics(),
        {"model_version": version, "check": "drift", "drifted": str(result.drifted).lower()},
        _files(registry, log_store, view, result),
    )
    return LiveCheck(
        "checked", result.summary() + skipped, version, result, view.unreadable, run_id
    )


def _files(registry, log_store, view, result: DriftResult) -> dict[str, bytes]:
    from pipelines.images.decode import thumbnail_grid

    shown = [view.entries[i] for i in result.most_drifted]
    files = {
        "drift.json": json.dumps(
            result.to_dict() | {"images": [e["id"] for e in shown]}, indent=2
        ).encode()
    }
    if shown:
        files["most-drifted.png"] = thumbnail_grid(
            [predlog.image_bytes(log_store, e) for e in shown],
            [f"{e['labels'][0]} {e['probs'][0]:.2f}" for e in shown],
        )
    history = [*registry.check_history("drift.mmd"), (time.time(), result.mmd)]
    files["drift-history.png"] = _history_plot(history)
    return files


def _history_plot(points: list[tuple[float, float]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.plot([datetime.fromtimestamp(t) for t, _ in points], [v for _, v in points], marker="o")
    ax.set_ylabel("MMD² vs training")
    ax.set_title("Drift of the live log")
    fig.autofmt_xdate()
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()
