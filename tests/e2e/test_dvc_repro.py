"""`dvc repro` rebuilds a model from a dataset version without Prefect: the real dvc.yaml
and refit.stages, in a temporary git repo, on a tiny dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.objectstore import Store
from core.policies import ValidationPolicy
from core.settings import PROJECT_ROOT, Settings
from pipelines.data.intake import Intake, IntakePaths, add_batch
from pipelines.data.versions import DvcStore
from tests.conftest import git_repo, write_class_folders

pytestmark = pytest.mark.e2e


def test_dvc_repro_validates_a_batch_and_trains_and_evaluates(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    shutil.copy(PROJECT_ROOT / "dvc.yaml", repo)
    shutil.copytree(PROJECT_ROOT / "pipelines", repo / "pipelines")  # code deps of the stages
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params.update(
        batch="incoming",
        architecture={"input_size": 24, "widths": [8, 8, 8]},
        train={"epochs": 1, "batch_size": 16, "val_share": 0.2, "patience": 0},
        validation={"min_images_per_class": 2, "min_images_per_new_class": 3},
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    work = tmp_path / "workspace"
    store = DvcStore(repo, repo / "data", str(work / "remote"), work / "cache", Store(str(work)))
    paths = IntakePaths(work / "staging", work / "quarantine", work / "batches", work / "lock")
    first = write_class_folders(tmp_path / "first", {"cat": 8, "dog": 8}, seed=1)
    policy = ValidationPolicy(min_images_per_class=2, min_images_per_new_class=3)
    intake = Intake(paths, Settings().ingest, policy, Settings().split)
    added = add_batch(first, store, intake, progress=lambda m: None)
    assert added.version is not None
    write_class_folders(repo / "incoming", {"cat": 3, "bird": 4}, seed=2)

    env = {
        **os.environ,
        "REFIT_DVC_REPO": str(repo),
        "REFIT_WORKSPACE": str(work),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    dvc = str(Path(sys.executable).parent / "dvc")
    done = subprocess.run(
        [dvc, "repro", "validate", "evaluate"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    validation = json.loads((repo / "build" / "validation.json").read_text())
    assert validation == {"passed": True, "images": 7, "failed_rules": 0, "new_classes": 1}
    metrics = json.loads((repo / "build" / "metrics.json").read_text())
    assert metrics["images"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0  # 20% of 8+8 holdout
    assert (repo / "dvc.lock").is_file()
    again = subprocess.run(
        [dvc, "repro", "evaluate"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert "didn't change, skipping" in again.stdout  # reproducible: nothing to redo
