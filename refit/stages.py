"""The DVC stages (`dvc.yaml`): ingest -> validate for a batch, train -> evaluate for the
dataset, each calling the same pipeline functions as the CLI and the flows.

`dvc repro` runs them without Prefect or any server, in the folder of `dvc.yaml`. Their
knobs come from `params.yaml` there (which DVC tracks), laid over the settings object;
outputs go to `build/` there.

    python -m refit.stages {ingest,validate,train,evaluate}
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from core.settings import Settings, get_settings

BUILD = Path("build")
PARAMS = Path("params.yaml")


def _settings_and_params() -> tuple[Settings, dict]:
    params = yaml.safe_load(PARAMS.read_text())
    overrides = {k: params[k] for k in ("validation", "architecture", "train") if k in params}
    return get_settings().overlay(overrides), params


def ingest() -> None:
    """Stage the batch named in params.yaml and write its manifest."""
    from pipelines.data.ingest import build_manifest, stage_batch, write_manifest

    settings, params = _settings_and_params()
    target = BUILD / "batch"
    shutil.rmtree(target, ignore_errors=True)
    staged = stage_batch(Path(params["batch"]), BUILD, settings.ingest, "batch")
    write_manifest(build_manifest(staged, settings.ingest), BUILD / "manifest.csv")
    (BUILD / "findings.json").write_text(json.dumps([f.__dict__ for f in staged.findings]))


def validate() -> None:
    """Validate the staged batch against the current dataset; write the report and metrics."""
    from pipelines.data.dataset import load_index, reference_of
    from pipelines.data.ingest import BatchFile, Finding, StagedBatch, read_manifest
    from pipelines.data.validate import validate_batch

    settings, params = _settings_and_params()
    manifest = read_manifest(BUILD / "manifest.csv")
    findings = [Finding(**f) for f in json.loads((BUILD / "findings.json").read_text())]
    files = [
        BatchFile(p, label, split)
        for p, label, split in zip(
            manifest["path"], manifest["label"], manifest["split"], strict=True
        )
    ]
    staged = StagedBatch("batch", Path(params["batch"]), BUILD / "batch", files, findings)
    reference = reference_of(load_index(settings.dataset_dir))
    report = validate_batch(staged, manifest, reference, settings.validation)
    report.write(BUILD / "validation")
    metrics = {
        "passed": report.passed,
        "images": report.n_images,
        "failed_rules": len(report.failed_rules),
        "new_classes": len(report.new_classes),
    }
    (BUILD / "validation.json").write_text(json.dumps(metrics, indent=2))


def train() -> None:
    """Train a model from scratch on the dataset's train split."""
    from pipelines import workspace
    from pipelines.models.modelfile import save_model
    from pipelines.training import scratch

    settings, _ = _settings_and_params()
    size = (settings.architecture.input_size,) * 2
    images, card = scratch.dataset_images(workspace.dataset(settings), "train", size)
    loaded = scratch.train_from_scratch(
        images, settings.architecture, settings.train, card, weights_dir=settings.weights_dir
    )
    save_model(loaded, BUILD / "model.keras")


def evaluate() -> None:
    """Holdout metrics of the trained model (classes it knows) into build/metrics.json."""
    from pipelines import workspace
    from pipelines.models.evaluate import holdout_card
    from pipelines.models.modelfile import load_refit_model

    settings, _ = _settings_and_params()
    loaded = load_refit_model(BUILD / "model.keras")
    dataset = workspace.dataset(settings)
    rows = dataset.rows("holdout", loaded.class_names)
    images = dataset.images(rows, loaded.input_size, loaded.class_names)
    metrics = holdout_card(loaded, images)
    (BUILD / "metrics.json").write_text(json.dumps(metrics, indent=2))


STAGES = {"ingest": ingest, "validate": validate, "train": train, "evaluate": evaluate}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        sys.exit(f"usage: python -m refit.stages {{{','.join(STAGES)}}}")
    BUILD.mkdir(exist_ok=True)
    STAGES[sys.argv[1]]()
