"""Judge a candidate: evaluate challenger and champion on the same holdout, ask the gate,
log and register the challenger, and promote it only when the gate blesses it.

The order is what keeps the champion safe: evaluate, decide, register the new version
fully, and only then move the alias. Any failure before the last step leaves the champion
where it was.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import GatePolicy
from pipelines.evaluate import Evaluation, curves_figure, evaluate, write_figures
from pipelines.gate import Decision, decide
from pipelines.modelfile import LoadedModel
from pipelines.registry import CHAMPION, Registry
from pipelines.train import ImageSet


@dataclass
class Judgement:
    """What happened to a candidate."""

    version: str
    run_id: str
    decision: Decision
    challenger: Evaluation
    champion: Evaluation | None
    champion_version: str | None
    promoted: bool


def _only_classes(holdout: ImageSet, classes: list[str]) -> ImageSet:
    keep = np.isin(np.array(holdout.class_names)[holdout.y], classes)
    return holdout.take(np.flatnonzero(keep))


def judge(
    challenger: LoadedModel,
    holdout: ImageSet,
    registry: Registry,
    policy: GatePolicy,
    *,
    run_name: str,
    params: dict | None = None,
    curves: dict[str, list[float]] | None = None,
    tags: dict[str, str] | None = None,
    reports: list[Path] | None = None,
    dataset: pd.DataFrame | None = None,
    dataset_dir: Path | None = None,
    dataset_version: str | None = None,
) -> Judgement:
    """Evaluate, gate, register and (if blessed) promote ``challenger``.

    Args:
        challenger: the candidate model; it must cover every class of ``holdout``.
        holdout: the fixed holdout images (``pipelines.dataset.evaluation_holdout``).
        registry: where versions and aliases live.
        policy: the gate's thresholds.
        run_name: a readable MLflow run name, e.g. ``finetune +truck batch-...``.
        params, curves, tags, reports: what the training step produced, logged with the run.
        dataset, dataset_dir, dataset_version: the dataset index, where it lives and its DVC
            version (the input's digest).
    """
    champion_version = registry.alias_version(CHAMPION)
    challenger_eval, challenger_probs = evaluate(challenger, holdout)
    champion_eval = None
    if champion_version is not None:
        champion = registry.load(CHAMPION)
        champion_images = _only_classes(holdout, champion.class_names)
        champion_eval, champion_probs = evaluate(champion, champion_images)
    decision = decide(
        challenger_eval,
        champion_eval,
        policy,
        f"champion v{champion_version}" if champion_version else "",
    )
    metrics = challenger_eval.flat_metrics("challenger.")
    if champion_eval is not None:
        metrics |= champion_eval.flat_metrics("champion.")
    metrics["gate.passed"] = float(decision.passed)
    with tempfile.TemporaryDirectory() as tmp:
        figures = write_figures(challenger_eval, challenger_probs, holdout, Path(tmp))
        if curves:
            figures.append(curves_figure(curves, Path(tmp) / "training_curves.png"))
        if champion_eval is not None:
            figures += write_figures(
                champion_eval, champion_probs, champion_images, Path(tmp), prefix="champion_"
            )
        all_tags = {
            "gate": "passed" if decision.passed else "failed",
            "gate.baseline": decision.baseline,
            "gate.reasons": "; ".join(decision.reasons)[:4900],
            "parent_version": champion_version or "none",
            "dataset_version": dataset_version or "unknown",
            **(tags or {}),
        }
        run_id, version = registry.log_candidate(
            challenger,
            run_name=run_name,
            params=params or {},
            curves=curves or {},
            metrics=metrics,
            artifacts=figures + list(reports or []),
            decision_markdown=decision.markdown(),
            tags=all_tags,
            dataset=dataset,
            dataset_version=dataset_version,
            reference_images=holdout.x[:: max(1, len(holdout.x) // 32)][:32],
        )
    promoted = False
    if decision.passed:
        registry.promote(
            version,
            reason=f"gate passed against {decision.baseline}",
            metrics={"accuracy": challenger_eval.accuracy},
        )
        promoted = True
    return Judgement(
        version, run_id, decision, challenger_eval, champion_eval, champion_version, promoted
    )


def judge_finetune(
    champion: LoadedModel,
    challenger: LoadedModel,
    fits: list,
    holdout: ImageSet,
    registry: Registry,
    policy: GatePolicy,
    *,
    batch_id: str,
    params: dict,
    index: pd.DataFrame,
    accepted_dir: Path,
    dataset_dir: Path,
    dataset_version: str | None,
    run_prefix: str = "finetune",
) -> Judgement:
    """:func:`judge` a fine-tuned challenger, with its curves, data reports and batch tags
    (what both `refit train finetune` and the retrain flow record)."""
    added = challenger.class_names[len(champion.class_names) :]
    curves = {
        f"{phase}.{key}": values
        for phase, fit in zip(("head", "finetune"), fits, strict=False)
        for key, values in fit.history.items()
    }
    return judge(
        challenger,
        holdout,
        registry,
        policy,
        run_name=f"{run_prefix} {'+' + ','.join(added) + ' ' if added else ''}{batch_id}",
        params=params,
        curves=curves,
        tags={"batch_id": batch_id, "recipe": "finetune"},
        dataset=index,
        reports=sorted((accepted_dir / batch_id).glob("report.*")),
        dataset_dir=dataset_dir,
        dataset_version=dataset_version,
    )
