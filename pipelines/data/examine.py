"""Examine a batch through the champion's eyes, at validation: the labels it strongly
disputes (cleanlab's confident learning) and how far the batch drifts from the training
images (``pipelines.loop.drift``). Both go into the validation report with thumbnail grids.

Confident learning needs each class's typical confidence. A batch that brings every class
the champion knows (``MIN_PER_CLASS`` images each) is judged alone; one that brings only
some (the usual case) is judged beside the champion's training sample (its labels and
probabilities, logged with the version), and only the batch's images are reported. Images of
classes the champion does not know cannot be disputed. What happens to disputed images is
``validation.label_issues``: warn (default), exclude (skipped, like a repair) or refuse
(the batch, when their share is over ``validation.label_issues_max_share``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.policies import ValidationPolicy
from pipelines.data.validate import RuleResult, ValidationReport
from pipelines.loop.features import TrainingFeatures

MIN_IMAGES = 10  # fewer known-class images than this: labels are not judged
MIN_PER_CLASS = 10  # a batch with this many of every class is judged without context


@dataclass(frozen=True)
class ChampionView:
    """The champion that judges batches: its model and its training sample's features."""

    loaded: object  # pipelines.models.modelfile.LoadedModel
    version: str
    reference: TrainingFeatures | None


def champion_view(registry) -> ChampionView | None:
    """The current champion with its training features; None before the first champion."""
    from core.contract import CHAMPION
    from pipelines.loop.features import TrainingFeatures

    version = registry.alias_version(CHAMPION)
    if version is None:
        return None
    data = registry.training_features(version)
    reference = TrainingFeatures.from_bytes(data) if data else None
    return ChampionView(registry.load(version), version, reference)


def label_issues(
    labels: np.ndarray, probs: np.ndarray, reference: TrainingFeatures | None
) -> np.ndarray:
    """Indices of the rows whose label (index into the model's classes) the model strongly
    disputes, most disputed first; judged beside the training sample (when there is one)
    unless the rows bring every class."""
    from cleanlab.filter import find_label_issues

    counts = np.bincount(labels, minlength=probs.shape[1])
    covered = counts.min() >= MIN_PER_CLASS
    context = len(reference.labels) if reference is not None and not covered else 0
    if context:
        labels = np.concatenate([reference.labels, labels])
        probs = np.concatenate([reference.probs, probs])
    with warnings.catch_warnings():  # "too few examples in class k": expected in a batch
        warnings.simplefilter("ignore")
        found = find_label_issues(  # n_jobs=1: no pool forked from a process holding
            labels,  # TensorFlow (and Prefect's SIGTERM handler, which its exit trips)
            probs,
            filter_by="prune_by_class",
            return_indices_ranked_by="self_confidence",
            n_jobs=1,
        )
    return np.array([i - context for i in found if i >= context], dtype=int)


def examine(
    view: ChampionView,
    root: Path,
    manifest: pd.DataFrame,
    report: ValidationReport,
    policy: ValidationPolicy,
    progress=print,
) -> ValidationReport:
    """The report with the champion's findings added (disputed labels, drift)."""
    from pipelines.images.decode import load_images
    from pipelines.loop.features import features_and_probs

    left_out = {row["path"] for row in report.skipped}
    kept = manifest[~manifest["path"].isin(left_out) & manifest["label"].notna()]
    if kept.empty:
        return report
    loaded = view.loaded
    progress(f"Examining {len(kept)} images with champion v{view.version}")
    names = sorted(set(kept["label"]))
    images = load_images(
        [root / p for p in kept["path"]], list(kept["label"]), names, loaded.input_size
    )
    probs, features = features_and_probs(loaded.model, images.x)
    rules, skipped = list(report.rules), list(report.skipped)
    issues = _disputed(view, kept, probs)
    if issues is not None:
        known = int(kept["label"].isin(loaded.class_names).sum())
        rules.append(_issues_rule(issues, known, policy, view.version))
        if policy.label_issues == "exclude":
            skipped += [
                {"path": x["path"], "rule": "label_issues", "detail": f"likely {x['likely']}"}
                for x in issues
            ]
    drift = _drift(view, kept, probs, features, policy, report.new_classes)
    if drift is not None:
        rules.append(_drift_rule(drift, view.version))
    return replace(
        report,
        grids=_grids(images.x, kept, issues or [], drift),
        rules=rules,
        skipped=skipped,
        passed=all(r.passed for r in rules),
        label_issues=issues or [],
        drift=drift,
        champion_version=view.version,
    )


def _disputed(view: ChampionView, kept: pd.DataFrame, probs: np.ndarray) -> list[dict] | None:
    """The images whose labels the champion strongly disputes (None: too few images of the
    classes it knows to judge)."""
    classes = list(view.loaded.class_names)
    known = kept["label"].isin(classes).to_numpy()
    if known.sum() < MIN_IMAGES:
        return None
    labels = np.array([classes.index(label) for label in kept["label"][known]])
    issues = []
    for i in np.flatnonzero(known)[label_issues(labels, probs[known], view.reference)]:
        likely = int(probs[i].argmax())
        label = kept["label"].iloc[i]
        issues.append(
            {
                "path": kept["path"].iloc[i],
                "label": label,
                "label_probability": round(float(probs[i][classes.index(label)]), 4),
                "likely": classes[likely],
                "likely_probability": round(float(probs[i][likely]), 4),
            }
        )
    return issues


def _drift(
    view: ChampionView,
    kept: pd.DataFrame,
    probs: np.ndarray,
    features: np.ndarray,
    policy: ValidationPolicy,
    new_classes: list[str],
) -> dict | None:
    """The drift test against the champion's training features (None: it kept none)."""
    from pipelines.loop.drift import compare

    if view.reference is None:
        return None
    classes = list(view.loaded.class_names)
    top1 = [classes[i] for i in probs.argmax(1)]
    result = compare(view.reference, features, top1, probs.max(1), policy.drift_alpha)
    note = f" (the batch brings new classes: {', '.join(new_classes)})" if new_classes else ""
    return result.to_dict() | {
        "paths": [kept["path"].iloc[i] for i in result.most_drifted],
        "summary": result.summary() + note,
    }


def _drift_rule(drift: dict, version: str) -> RuleResult:
    return RuleResult(
        "drift",
        f"Compared with champion v{version}'s training images: {drift['summary']}",
        True,
        int(drift["drifted"]),
        severity="warn",
        checked_by="refit (MMD)",
    )


def _grids(x: np.ndarray, kept: pd.DataFrame, issues: list[dict], drift: dict | None) -> dict:
    """Thumbnail grids of the disputed images and of the most drifted ones."""
    grids = {}
    if issues:
        captions = [f"{i['label']}>{i['likely']}" for i in issues]
        grids["label_issues"] = _grid(x, kept, [i["path"] for i in issues], captions)
    if drift and drift["paths"]:
        captions = [p.rsplit("/", 1)[-1] for p in drift["paths"]]
        grids["drift"] = _grid(x, kept, drift["paths"], captions)
    return grids


def _grid(x: np.ndarray, kept: pd.DataFrame, paths: list[str], captions: list[str]) -> str:
    import base64

    from pipelines.images.decode import thumbnail_grid

    where = {path: i for i, path in enumerate(kept["path"])}
    shown = [x[where[p]] for p in paths[:32]]
    return base64.b64encode(thumbnail_grid(shown, captions[:32])).decode()


def _issues_rule(
    issues: list[dict], judged: int, policy: ValidationPolicy, version: str
) -> RuleResult:
    share = len(issues) / judged
    action = policy.label_issues
    description = (
        f"Champion v{version} does not strongly dispute the labels (cleanlab confident "
        f"learning on {judged} images of classes it knows): {len(issues)} disputed "
        f"({share:.0%}); validation.label_issues = {action}"
    )
    if action == "refuse":
        description += f", refused over {policy.label_issues_max_share:.0%}"
    examples = [f"{x['path']}: labelled {x['label']}, likely {x['likely']}" for x in issues]
    passed = action != "refuse" or share <= policy.label_issues_max_share
    severity = {"warn": "warn", "exclude": "repair", "refuse": "refuse"}[action]
    return RuleResult(
        "label_issues",
        description + ".",
        passed,
        len(issues),
        examples[: policy.max_examples],
        checked_by="cleanlab",
        severity=severity,
    )
