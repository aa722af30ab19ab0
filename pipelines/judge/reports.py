"""The run reports people read in the Prefect UI and on the Retrain page (markdown)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from core.contract import FLIPS_ARTIFACT

if TYPE_CHECKING:
    from pipelines.judge.candidate import Judgement


def links(
    mlflow_url: str, model_name: str, run_id: str, version: str, reports: Path, flips: bool = False
) -> str:
    """Where to look next: the MLflow run, the model version, the data reports, and (with
    ``flips``) the negative flips' thumbnail grid, shown inline from the MLflow server."""
    artifact = f"{mlflow_url}/get-artifact?run_uuid={run_id}&path="
    grid = (
        f"\n### Negative flips\nHoldout images the champion got right and the challenger gets "
        f"wrong (true class > challenger's answer):\n\n![negative flips]"
        f"({artifact}{FLIPS_ARTIFACT})\n"
        if flips
        else ""
    )
    return (
        f"### Links\n- MLflow run: {mlflow_url}/#/runs/{run_id}\n"
        f"- Model version: {mlflow_url}/#/models/{model_name}/versions/{version}\n"
        f"- Decision report: {artifact}reports/report.html\n"
        f"- Data reports: `{reports}`\n{grid}"
    )


def _text(value: object) -> str:
    """Text from users (file, batch and class names) as it must reach a markdown page:
    never as markup."""
    return html.escape(str(value), quote=False)


def rejection(batch_name: str, summary: str, quarantined: Path) -> str:
    """A batch that failed validation (its names may be anything: shown escaped)."""
    return (
        f"## Batch `{_text(batch_name)}` rejected\n\n{_text(summary)}\n\n"
        f"Quarantined in `{quarantined}` (report.html inside). "
        "The dataset and the champion are unchanged.\n"
    )


def live_check(smoke: dict | None) -> str:
    """The smoke check's result after a promotion (empty when there was none)."""
    if not smoke:
        return ""
    return (
        f"\n\n### Live check\nServing answers with v{smoke['version']}; "
        f"{smoke['agreement']:.1%} of {smoke['images']} holdout images match the offline "
        f"predictions (live accuracy {smoke['accuracy']:.4f})."
    )


def _metric_rows(judgement: Judgement) -> str:
    challenger, champion = judgement.challenger, judgement.champion
    rows = [
        ("accuracy", challenger.accuracy, champion.accuracy if champion else None),
        ("macro F1", challenger.macro_f1, champion.macro_f1 if champion else None),
        ("ECE", challenger.ece, champion.ece if champion else None),
    ]
    return "\n".join(
        f"| {name} | {new:.4f} | {'-' if old is None else f'{old:.4f}'} |"
        for name, new, old in rows
    )


def _recall_rows(judgement: Judgement) -> str:
    champion = judgement.champion
    return "\n".join(
        f"| {name} | {stats['recall']:.3f} | {champion.per_class[name]['recall']:.3f} |"
        if champion and name in champion.per_class
        else f"| {name} | {stats['recall']:.3f} | new |"
        for name, stats in judgement.challenger.per_class.items()
    )


def decision(judgement: Judgement, data_summary: str, links_md: str, smoke: dict | None) -> str:
    """The gate's decision, champion vs challenger on the same holdout, recall per class,
    the data, the links and the live check."""
    champion = f"v{judgement.champion_version}" if judgement.champion_version else ""
    note = f"\n**{judgement.note}**\n" if judgement.note else ""
    return (
        f"{judgement.decision.markdown()}{note}\n### Champion vs challenger (same holdout)\n"
        f"| metric | challenger v{judgement.version} | champion {champion} |\n"
        f"|---|---|---|\n{_metric_rows(judgement)}\n\n"
        f"### Recall per class\n| class | challenger | champion |\n"
        f"|---|---|---|\n{_recall_rows(judgement)}\n\n### Data\n{_text(data_summary)}\n\n"
        f"{links_md}{live_check(smoke)}\n"
    )


def notice(judgement: Judgement) -> tuple[str, str, str]:
    """What to tell people about a judged challenger: (event, title, body)."""
    decision = judgement.decision
    event = (
        "promoted"
        if judgement.promoted
        else "awaiting-approval"
        if judgement.awaiting
        else {"blessed": "inconclusive"}.get(decision.outcome, decision.outcome)
    )
    title = {
        "promoted": f"v{judgement.version} promoted to champion",
        "awaiting-approval": f"v{judgement.version} waits for your approval",
        "refused": f"v{judgement.version} refused",
        "inconclusive": f"v{judgement.version} not promoted",
    }[event]
    failed = [c for c in decision.checks if c.state != "pass"]
    why = "; ".join(f"{c.name}: {c.detail}" for c in failed) or "every check passed"
    body = f"Gate: {decision.outcome} against {decision.baseline}. {why}." + (
        f" {judgement.note}." if judgement.note else ""
    )
    return event, title, body


def bootstrap(judgement: Judgement, links_md: str, smoke: dict | None) -> str:
    """The first champion's report."""
    note = f"\n**{judgement.note}**\n" if judgement.note else ""
    return f"{judgement.decision.markdown()}{note}\n{links_md}{live_check(smoke)}\n"
