"""Judge a candidate: evaluate challenger and champion on the same holdout, ask the gate,
log and register the challenger, and promote it only when the gate blesses it.

The order is what keeps the champion safe: evaluate (:func:`assess`), then register the new
version fully and only then move the alias (:func:`record`). Any failure before the last
step leaves the champion where it was.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from core.contract import (
    APPROVAL_TAG,
    CHALLENGER_PREFIX,
    CHAMPION,
    DATASET_VERSION_TAG,
    FLIPS_ARTIFACT,
    GATE_TAG,
    JUDGED_AGAINST_TAG,
    NOT_PROMOTED_TAG,
    PARENT_TAG,
    SUBMISSION_TAG,
)
from core.faults import failpoint
from core.policies import FinetuneConfig, GatePolicy
from core.progress import Progress
from pipelines.data.dataset import Dataset
from pipelines.images.decode import ImageSet
from pipelines.judge import approval as approvals
from pipelines.judge.figures import curves_figure, write_figures
from pipelines.judge.gate import Answers, Decision, decide
from pipelines.judge.registry import Registry
from pipelines.judge.registry_client import ChampionMoved
from pipelines.judge.registry_writes import CandidateRecord, CandidateRun
from pipelines.judge.shadow import compare, read_sample
from pipelines.models.evaluate import Evaluation, EvaluationError, accuracy_on, evaluate
from pipelines.models.modelfile import LoadedModel
from pipelines.training.finetune import finetune_on_batch
from pipelines.training.fit import FitResult

FLIPS_FIGURE = Path(FLIPS_ARTIFACT).name


@dataclass(frozen=True)
class Baseline:
    """The model a challenger is compared with: the registry's champion (its version), or
    a model file it was fine-tuned from (no version)."""

    model: LoadedModel
    version: str | None = None


def current_champion(registry: Registry) -> Baseline | None:
    """The registry's champion, downloaded once, or None before the first one."""
    version = registry.alias_version(CHAMPION)
    return None if version is None else Baseline(registry.load(version), version)


@dataclass
class Assessment:
    """Challenger and baseline evaluated on the same holdout, and the gate's decision."""

    holdout: ImageSet
    challenger: Evaluation
    challenger_probs: np.ndarray
    champion: Evaluation | None
    champion_probs: np.ndarray | None
    champion_version: str | None
    decision: Decision
    answers: Answers | None = None

    def summary(self) -> dict[str, object]:
        """Old-class accuracy before and after, all-class accuracy, new-class recall."""
        if self.champion is None:
            return {"all_class_accuracy_after": round(self.challenger.accuracy, 4)}
        old = [c for c in self.champion.class_names if c in self.champion.per_class]
        return {
            "old_class_accuracy_before": round(self.champion.accuracy, 4),
            "old_class_accuracy_after": round(accuracy_on(self.challenger, old), 4),
            "all_class_accuracy_after": round(self.challenger.accuracy, 4),
            "new_class_recall": {
                c: round(self.challenger.recall(c), 4)
                for c in self.decision.new_classes
                if c in self.challenger.per_class
            },
            "images": self.challenger.images,
        }

    def figures(self, out_dir: Path, curves: dict[str, list[float]]) -> list[Path]:
        figures = write_figures(self.challenger, self.challenger_probs, self.holdout, out_dir)
        if curves:
            figures.append(curves_figure(curves, out_dir / "training_curves.png"))
        if self.champion is not None:
            champion_images = self.holdout.only(self.champion.class_names)
            figures += write_figures(
                self.champion, self.champion_probs, champion_images, out_dir, "champion_"
            )
            if self.answers is not None and len(self.answers.negative_flips):
                figures.append(self._flips_figure(champion_images, out_dir))
        return figures

    def _flips_figure(self, images: ImageSet, out_dir: Path) -> Path:
        """A thumbnail grid of the negative flips (the first 64): true class > challenger's."""
        from pipelines.images.decode import thumbnail_grid

        flips = self.answers.negative_flips[:64]
        keep = np.flatnonzero(
            np.isin(np.array(self.holdout.class_names)[self.holdout.y], self.champion.class_names)
        )
        guesses = self.challenger_probs[keep][flips].argmax(axis=1)
        captions = [
            f"{self.answers.labels[i]}>{self.challenger.class_names[g]}"
            for i, g in zip(flips, guesses, strict=True)
        ]
        path = out_dir / FLIPS_FIGURE
        path.write_bytes(thumbnail_grid(list(images.x[flips]), captions))
        return path


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
    note: str = ""  # why a blessed challenger was not promoted
    awaiting: bool = False  # waits for a person's approval


def assess(
    challenger: LoadedModel,
    holdout: ImageSet,
    policy: GatePolicy,
    baseline: Baseline | None,
    log_store=None,
) -> Assessment:
    """Evaluate ``challenger`` on ``holdout`` and ``baseline`` on the images of its classes
    (each predicted once), pair their answers image by image, run both on the production
    traffic in ``log_store`` (the prediction log; None: no shadow check), and ask the gate."""
    challenger_eval, challenger_probs = evaluate(challenger, holdout)
    champion_eval = champion_probs = answers = shadow = None
    if baseline is not None:
        images = holdout.only(baseline.model.class_names)
        champion_eval, champion_probs = evaluate(baseline.model, images)
        answers = pair(holdout, baseline.model, champion_probs, challenger, challenger_probs)
        if log_store is not None and policy.shadow_images:
            sample = read_sample(log_store, policy.shadow_images)
            shadow = compare(baseline.model, challenger, sample, policy.alpha)
    version = baseline.version if baseline else None
    label = f"champion v{version}" if version else "the parent model" if baseline else ""
    decision = decide(challenger_eval, champion_eval, policy, label, answers, shadow)
    return Assessment(
        holdout,
        challenger_eval,
        challenger_probs,
        champion_eval,
        champion_probs,
        version,
        decision,
        answers,
    )


def pair(
    holdout: ImageSet,
    champion: LoadedModel,
    champion_probs: np.ndarray,
    challenger: LoadedModel,
    challenger_probs: np.ndarray,
) -> Answers:
    """Both models' correctness on the holdout images of the champion's classes, in order
    (``champion_probs`` are its answers on exactly those images)."""
    names = np.array(holdout.class_names)[holdout.y]
    keep = np.isin(names, champion.class_names)
    labels = names[keep]

    def right(model: LoadedModel, probs: np.ndarray) -> np.ndarray:
        truth = np.array([model.class_names.index(name) for name in labels], dtype=int)
        return probs.argmax(axis=1) == truth

    return Answers(
        labels, right(champion, champion_probs), right(challenger, challenger_probs[keep])
    )


def record(
    assessment: Assessment,
    challenger: LoadedModel,
    registry: Registry,
    run: CandidateRun,
    dataset: Dataset | None = None,
    policy: GatePolicy | None = None,
    embed=None,
) -> Judgement:
    """Log the candidate's run, register it, and promote it if the gate blessed it (unless
    the gate's ``policy`` asks a person first: then it waits, tagged). The version keeps
    its training sample's features, and their ``embed`` embedding when given."""
    decision = assessment.decision
    metrics = assessment.challenger.flat_metrics(CHALLENGER_PREFIX)
    if assessment.champion is not None:
        metrics |= assessment.champion.flat_metrics("champion.")
    metrics["gate.passed"] = float(decision.passed)
    metrics |= decision.metrics()
    tags = {
        GATE_TAG: {"blessed": "passed", "refused": "failed"}.get(
            decision.outcome, decision.outcome
        ),
        "gate.baseline": decision.baseline,
        "gate.reasons": "; ".join(decision.reasons)[:4900],
        PARENT_TAG: assessment.champion_version or "none",
        JUDGED_AGAINST_TAG: assessment.champion_version or "none",
        DATASET_VERSION_TAG: (dataset.version if dataset else None) or "unknown",
        **run.tags,
    }
    holdout = assessment.holdout
    with tempfile.TemporaryDirectory() as tmp:
        figures = assessment.figures(Path(tmp), run.curves)
        flips = Path(tmp, FLIPS_FIGURE)
        page = Path(tmp, "report.html")
        page.write_text(decision.html(flips.read_bytes() if flips.is_file() else None))
        record = CandidateRecord(
            run,
            tags,
            metrics,
            [*figures, page, *run.reports],
            decision.markdown(),
            reference_images=holdout.x[:: max(1, len(holdout.x) // 32)][:32],
            training_features=_training_features(challenger, dataset, embed),
        )
        run_id, version = registry.log_candidate(challenger, record, dataset)
    failpoint("registered")
    awaiting = policy is not None and approvals.needs_person(decision.outcome, policy)
    promoted, note = decision.passed and not awaiting, ""
    if awaiting:
        approvals.request(registry, version)
        note = "waiting for a person's approval (`refit model approve`)"
    elif decision.passed:
        try:  # compare-and-set: only over the champion it was judged against
            registry.promote(
                version,
                reason=f"gate passed against {decision.baseline}",
                metrics={"accuracy": assessment.challenger.accuracy},
                expected=assessment.champion_version,
            )
        except ChampionMoved as exc:
            promoted, note = False, f"blessed but not promoted: {exc}"
            registry.tag_version(version, NOT_PROMOTED_TAG, note)
    return Judgement(
        version,
        run_id,
        decision,
        assessment.challenger,
        assessment.champion,
        assessment.champion_version,
        promoted,
        note,
        awaiting,
    )


def _training_features(challenger: LoadedModel, dataset: Dataset | None, embed) -> bytes | None:
    from pipelines.loop.features import training_features

    found = training_features(challenger, dataset, embed=embed) if dataset is not None else None
    return found.to_bytes() if found is not None else None


def resume_recorded(
    registry: Registry, submission: str, policy: GatePolicy
) -> tuple[str, bool] | None:
    """Finish what a run killed after registering ``submission``'s challenger left undone:
    promote it if the gate blessed it, no person must approve it first (``policy``), and the
    champion is still the one it was judged against (else tag why not). Returns (version,
    promoted), or None if none is registered."""
    recorded = registry.tagged(SUBMISSION_TAG, submission)
    if not recorded:
        return None
    version, tags = recorded[0]
    champion = registry.alias_version(CHAMPION)
    if champion == version:
        return version, True
    if APPROVAL_TAG in tags:
        return version, False
    outcome = {"passed": "blessed", "failed": "refused"}.get(tags.get(GATE_TAG, ""), "")
    if approvals.needs_person(outcome or "inconclusive", policy):
        approvals.request(registry, version)
        return version, False
    if tags.get(GATE_TAG) != "passed" or NOT_PROMOTED_TAG in tags:
        return version, False
    parent = approvals.judged_against(tags)
    try:
        registry.promote(
            version,
            reason=f"gate passed against {f'champion v{parent}' if parent else 'no baseline'}"
            " (resumed)",
            expected=parent,
        )
    except ChampionMoved as exc:
        registry.tag_version(version, NOT_PROMOTED_TAG, f"blessed but not promoted: {exc}")
        return version, False
    return version, True


def judge(
    challenger: LoadedModel,
    holdout: ImageSet,
    registry: Registry,
    policy: GatePolicy,
    run: CandidateRun,
    dataset: Dataset | None = None,
    log_store=None,
    embed=None,
) -> Judgement:
    """Assess ``challenger`` against the registry's champion (and on the production traffic
    in ``log_store``), record it (``embed``: see :func:`record`), promote if blessed."""
    assessment = assess(challenger, holdout, policy, current_champion(registry), log_store)
    return record(assessment, challenger, registry, run, dataset, policy, embed)


def judge_model_file(
    challenger: LoadedModel,
    dataset: Dataset,
    registry: Registry,
    policy: GatePolicy,
    run: CandidateRun,
    log_store=None,
    embed=None,
) -> Judgement:
    """Judge a whole model (a file, the built-in model, one trained from scratch) on the
    dataset's holdout: what registering a model file means.

    Raises:
        EvaluationError: the dataset has no holdout to judge on.
    """
    holdout = dataset.holdout_images(challenger.input_size)
    if len(holdout) == 0:
        raise EvaluationError(
            "the dataset has no holdout to judge on; add a batch with `refit data add`"
        )
    if not run.params:  # the recipe the file's card records (the caller's run is kept)
        run = replace(run, params=challenger.card.get("train", {}))
    return judge(challenger, holdout, registry, policy, run, dataset, log_store, embed)


@dataclass
class Challenge:
    """A challenger fine-tuned from ``parent`` on one merged batch of ``dataset``, ready to
    be judged."""

    parent: Baseline
    challenger: LoadedModel
    fits: list[FitResult]
    dataset: Dataset
    config: FinetuneConfig

    @cached_property
    def holdout(self) -> ImageSet:
        """The dataset's holdout images of the challenger's classes (decoded once)."""
        size = self.parent.model.input_size
        return self.dataset.holdout_images(size, self.challenger.class_names)


def challenge(
    parent: Baseline,
    dataset: Dataset,
    batch_id: str,
    config: FinetuneConfig,
    progress: Progress = print,
) -> Challenge:
    """Fine-tune ``parent`` on the merged batch ``batch_id`` with replay (growing the head
    for new classes): the first half of fine-tune-and-judge.

    Raises:
        NotTrainable: the batch has no training images in the dataset.
    """
    challenger, fits = finetune_on_batch(parent.model, dataset, batch_id, config, progress=progress)
    return Challenge(parent, challenger, fits, dataset, config)


def judge_challenge(
    trial: Challenge,
    registry: Registry,
    policy: GatePolicy,
    accepted_dir: Path,
    *,
    run_prefix: str = "finetune",
    tags: dict[str, str] | None = None,
    assessment: Assessment | None = None,
    log_store=None,
    embed=None,
) -> Judgement:
    """The second half: judge the challenger against the registry's champion on the
    dataset's holdout, record its fine-tune run, register it, promote it if blessed.

    ``assessment`` (made against the parent) is reused when the parent is the champion; a
    challenger fine-tuned from a model file is judged against the champion afresh
    (``log_store``: the prediction log, for the shadow check; ``embed``: see :func:`record`).
    """
    parent = trial.parent
    if assessment is None or parent.version is None:
        champion = parent if parent.version is not None else current_champion(registry)
        assessment = assess(trial.challenger, trial.holdout, policy, champion, log_store)
    run = finetune_run(
        parent.model, trial.challenger, trial.fits, trial.config, accepted_dir, run_prefix
    )
    if parent.version is None:
        run.tags[PARENT_TAG] = "a model file"  # lineage names the real parent
    run.tags.update(tags or {})
    return record(assessment, trial.challenger, registry, run, trial.dataset, policy, embed)


def finetune_run(
    parent: LoadedModel,
    challenger: LoadedModel,
    fits: list,
    config: FinetuneConfig,
    accepted_dir: Path,
    prefix: str = "finetune",
) -> CandidateRun:
    """The run record of a challenger fine-tuned from ``parent`` with ``config``: its curves,
    its batch's data reports and tags (what `refit train finetune` and the retrain flow log)."""
    batch_id = challenger.card["batch_id"]
    added = challenger.class_names[len(parent.class_names) :]
    return CandidateRun(
        name=f"{prefix} {'+' + ','.join(added) + ' ' if added else ''}{batch_id}",
        params=config.model_dump(),
        curves={
            f"{phase}.{key}": values
            for phase, fit in zip(("head", "finetune"), fits, strict=False)
            for key, values in fit.history.items()
        },
        tags={"batch_id": batch_id, "recipe": "finetune"},
        reports=sorted((accepted_dir / batch_id).glob("report.*")),
    )
