"""The registry's write side: a candidate's run logged and its model registered, and the
alias-move protocol (promote with compare-and-set, roll back, finish a move a killed
process left half done), every move appended to the promotion history."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import psutil

from core import contract
from core.faults import failpoint
from pipelines.judge.registry_reads import RegistryReads
from pipelines.models.modelfile import LoadedModel, save_model

if TYPE_CHECKING:
    from pipelines.data.dataset import Dataset


@dataclass
class CandidateRun:
    """What a candidate's MLflow run records besides its evaluation."""

    name: str
    params: dict = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    reports: list[Path] = field(default_factory=list)


@dataclass
class CandidateRecord:
    """Everything a candidate's run records: the run itself, the judging's tags and metrics,
    its figures and the decision. ``reference_images`` (a few holdout images, uint8) travel
    with the version so that serving can check its ONNX export against Keras on real images;
    ``training_features`` (``pipelines.loop.features.TrainingFeatures`` bytes) let drift
    checks and the label queue compare live images with the training images."""

    run: CandidateRun
    tags: dict[str, str]
    metrics: dict[str, float]
    artifacts: list[Path]
    decision_markdown: str
    reference_images: np.ndarray | None = None
    training_features: bytes | None = None


def pip_requirements() -> list[str]:
    """What the logged model needs, pinned to what trained it (no slow inference)."""
    return [
        f"tensorflow-cpu=={package_version('tensorflow-cpu')}",
        f"keras=={package_version('keras')}",
    ]


def git_sha() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def _log_record(client, record: CandidateRecord, dataset: Dataset | None) -> None:
    """Into the active MLflow run: params, curves per step (one request), metrics, the
    decision, and the dataset version as an input."""
    from mlflow.entities import Metric

    import mlflow

    run = record.run
    mlflow.log_params({k: str(v)[:500] for k, v in run.params.items()})
    now = int(time.time() * 1000)
    curves = [
        Metric(key, value, now, step)
        for key, values in run.curves.items()
        for step, value in enumerate(values)
    ]
    if curves:
        client.log_batch(mlflow.active_run().info.run_id, metrics=curves)
    mlflow.log_metrics(record.metrics)
    mlflow.log_text(record.decision_markdown, "decision.md")
    if dataset is not None:
        digest = (dataset.version or "")[:36] or None
        frame = mlflow.data.from_pandas(
            dataset.index, source=str(dataset.dir), name="refit-dataset", digest=digest
        )
        mlflow.log_input(frame, context="training")


def _version_tags(model: LoadedModel, tags: dict[str, str], dataset: Dataset | None) -> dict:
    """The run's and the version's tags: provenance (git sha, the process that logged it),
    the class names, an imported model's origin and pixels, the dataset index's digest."""
    digest = {"dataset.index_sha256": _frame_digest(dataset.index)} if dataset is not None else {}
    return {
        "git_sha": git_sha() or "unknown",
        contract.OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}",
        contract.CLASS_NAMES_TAG: json.dumps(model.class_names),
        **{
            tag: str(model.card[tag])
            for tag in (contract.IMPORTED_TAG, contract.PIXELS_TAG)
            if tag in model.card
        },
        **tags,
        **digest,
    }


def _record_files(artifacts: list[Path]) -> list[tuple[Path, str]]:
    """The figures and reports, with the run folder each goes to."""
    return [(p, "evaluation" if p.suffix in (".png", ".json") else "reports") for p in artifacts]


def _model_files(
    model: LoadedModel, reference_images: np.ndarray | None, features: bytes | None, tmp: Path
) -> list[tuple[Path, str]]:
    """The Refit model file, the reference images and the serving engine built and checked
    on them, where the contract says, written to ``tmp``."""
    from pipelines.models.engine import build

    files = [(save_model(model, tmp / contract.MODEL_FILE_NAME), contract.MODEL_FILE_DIR)]
    if reference_images is not None:
        np.save(images := tmp / contract.REFERENCE_NAME, reference_images.astype(np.uint8))
        files.append((images, contract.REFERENCE_DIR))
        built = build(model.model, reference_images.astype(np.uint8))
        check = tmp / Path(contract.ENGINE_CHECK_ARTIFACT).name
        check.write_text(json.dumps(built.check))
        np.save(expected := tmp / Path(contract.EXPECTED_ARTIFACT).name, built.expected)
        files += [(check, contract.ENGINE_DIR), (expected, contract.ENGINE_DIR)]
        if built.onnx is not None:
            onnx = tmp / Path(contract.ONNX_ARTIFACT).name
            onnx.write_bytes(built.onnx)
            files.append((onnx, contract.ENGINE_DIR))
    if features is not None:
        path = tmp / Path(contract.TRAINING_FEATURES_ARTIFACT).name
        path.write_bytes(features)
        files.append((path, contract.REFERENCE_DIR))
    return files


def _log_keras(model: LoadedModel):
    """The model in the ``mlflow.keras`` flavour, with explicit requirements (inferring them
    costs ~26 s) and its class names in the metadata."""
    import mlflow.keras
    from mlflow.models import infer_signature

    x = np.zeros((1, *model.model.input_shape[1:]), "float32")
    return mlflow.keras.log_model(
        model.model,
        name="model",
        pip_requirements=pip_requirements(),
        signature=infer_signature(x, model.model(x).numpy()),
        metadata={"class_names": model.class_names},
    )


def _frame_digest(frame: pd.DataFrame) -> str:
    """sha256 of a table's CSV form: the manifest digest of the dataset index."""
    import hashlib

    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


class RegistryWrites(RegistryReads):
    """Candidates logged and registered; aliases moved."""

    def log_candidate(
        self, model: LoadedModel, record: CandidateRecord, dataset: Dataset | None = None
    ) -> tuple[str, str]:
        """Log a candidate's run (``record``) with ``dataset`` as its input, and register
        ``model`` as a new version.

        Returns:
            (run id, registered version). No alias moves here.
        """
        import mlflow

        mlflow.set_tracking_uri(self.config.tracking_uri)
        mlflow.set_registry_uri(self.config.registry_uri)
        experiment = self.experiment_id()
        self._ensure_registered_model()
        self.end_abandoned_runs(experiment)
        tags = _version_tags(model, record.tags, dataset)

        def log() -> tuple[str, str]:
            with mlflow.start_run(experiment_id=experiment, run_name=record.run.name) as active:
                mlflow.set_tags(tags)
                failpoint("register")
                _log_record(self.client, record, dataset)
                info = self._upload(active.info.run_id, model, record)
                registered = self.client.create_model_version(
                    self.name,
                    info.model_uri,
                    run_id=active.info.run_id,
                    tags=tags,
                    model_id=info.model_id,
                )
                return active.info.run_id, str(registered.version)

        return self._call("log the candidate", log)

    def _upload(self, run_id: str, model: LoadedModel, record: CandidateRecord):
        """The figures, reports, model file and references side by side (each a round trip
        to the artifact store), and the model in the ``mlflow.keras`` flavour."""
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
            files = [
                *_record_files(record.artifacts),
                *_model_files(model, record.reference_images, record.training_features, Path(tmp)),
            ]
            uploads = [
                pool.submit(self.client.log_artifact, run_id, str(f), folder) for f, folder in files
            ]
            info = _log_keras(model)
            for upload in uploads:
                upload.result()
        return info

    def end_abandoned_runs(self, experiment: str) -> list[str]:
        """Mark KILLED the runs left RUNNING by a process of this host that is gone (killed,
        or its MLflow server died mid-run so it could not say it failed). Returns their ids."""
        from mlflow.entities import RunStatus

        running = self._call(
            "find running runs",
            lambda: self.client.search_runs([experiment], "attributes.status = 'RUNNING'"),
        )
        ended = []
        for run in running:
            host, _, pid = run.data.tags.get(contract.OWNER_TAG, "").rpartition(":")
            if host != socket.gethostname() or not pid.isdigit() or psutil.pid_exists(int(pid)):
                continue  # another host's, or its process is still there
            self._call(
                "end an abandoned run",
                lambda run=run: self.client.set_terminated(
                    run.info.run_id, RunStatus.to_string(RunStatus.KILLED)
                ),
            )
            ended.append(run.info.run_id)
        return ended
