"""The registry: MLflow tracking of candidate models, registry versions, aliases, history.

One MLflow experiment per registered model. A candidate's run records its parameters,
per-epoch curves, holdout metrics of challenger and champion, figures, the data-validation
report, the dataset version as an MLflow dataset input, tags (git sha, batch id, parent
version) and the gate decision; the Keras model is logged with the ``mlflow.keras`` flavour
and explicit ``pip_requirements`` (inferring them costs ~26 s per model), its class names
in the model metadata, and registered as a new version.

Aliases, never the deprecated stages: ``champion`` is what serves, ``previous`` what served
before it. An alias moves only after the version is fully registered, and every move is
appended to a promotion history kept as tags on the registered model (who, what, why,
when, metrics). Calls to the tracking server are retried with backoff; when it stays
down, :class:`RegistryUnavailable` says so and nothing moved.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import psutil

from core import contract
from core.contract import CHAMPION, HISTORY_PREFIX, PREVIOUS
from core.faults import failpoint
from pipelines.models.modelfile import LoadedModel, save_model

if TYPE_CHECKING:
    from pipelines.data.dataset import Dataset

T = TypeVar("T")


class RegistryError(RuntimeError):
    """A registry action is not possible; the message says why. Nothing moved."""


class RegistryUnavailable(RegistryError):
    """The MLflow server did not answer after the retries."""


class ChampionMoved(RegistryError):
    """The champion is no longer the one a promotion was judged against."""


@dataclass
class CandidateRun:
    """What a candidate's MLflow run records besides its evaluation."""

    name: str
    params: dict = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    reports: list[Path] = field(default_factory=list)


ANY = object()  # promote(expected=ANY): no compare-and-set (a manual promote or rollback)


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str
    registry_uri: str
    model_name: str
    artifact_location: str | None = None  # for clients that write to a database directly
    cache_dir: Path | None = None  # downloaded versions (see Registry.load)
    retries: int = 4
    backoff_s: float = 0.5


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as `refit model list` shows it."""

    version: str
    aliases: list[str]
    created: str
    run_id: str
    accuracy: float | None
    dataset_version: str | None
    class_names: list[str]
    decision: str | None


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


class Registry:
    """Refit's view of one registered model in MLflow."""

    def __init__(self, config: RegistryConfig) -> None:
        from mlflow import MlflowClient

        # We retry with our own backoff; MLflow's own HTTP retries would add minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.config = config
        self.name = config.model_name
        self.client = MlflowClient(config.tracking_uri, config.registry_uri)

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an MLflow call, retrying with exponential backoff while the server is down."""
        delay = self.config.backoff_s
        for attempt in range(1, self.config.retries + 1):
            try:
                return fn()
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                if attempt == self.config.retries:
                    raise RegistryUnavailable(
                        f"MLflow at {self.config.tracking_uri} did not answer to {what} after "
                        f"{attempt} tries; is it running (`refit up`)?"
                    ) from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def experiment_id(self, name: str | None = None) -> str:
        """The id of experiment ``name`` (default: the model's), made if missing."""
        name = name or self.name

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = self.config.artifact_location
            if location and name != self.name:  # beside the model's, not inside it
                location = f"{location.rstrip('/')}-{name}"
            return self.client.create_experiment(name, artifact_location=location)

        return self._call("find the experiment", get_or_create)

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        def ensure() -> None:
            try:
                self.client.get_registered_model(self.name)
            except MlflowException as exc:
                if not _missing(exc):
                    raise
                self.client.create_registered_model(
                    self.name, description="Image classifier kept up to date by Refit."
                )

        self._call("create the registered model", ensure)

    # -- logging and registering ---------------------------------------------------------

    def log_candidate(
        self,
        model: LoadedModel,
        *,
        run: CandidateRun,
        tags: dict[str, str],
        metrics: dict[str, float],
        artifacts: list[Path],
        decision_markdown: str,
        dataset: Dataset | None = None,
        reference_images: np.ndarray | None = None,
        training_features: bytes | None = None,
    ) -> tuple[str, str]:
        """Log a candidate's run (``run``: name, params, curves; plus ``tags``, ``metrics``
        and ``artifacts``) and register its model as a new version.

        ``reference_images`` (a few holdout images, uint8) travel with the version so that
        serving can check its ONNX export against Keras on real images;
        ``training_features`` (``pipelines.loop.features.TrainingFeatures`` bytes) let drift
        checks and the label queue compare live images with the training images.

        Returns:
            (run id, registered version). No alias moves here.
        """
        import mlflow

        mlflow.set_tracking_uri(self.config.tracking_uri)
        mlflow.set_registry_uri(self.config.registry_uri)
        experiment = self.experiment_id()
        self._ensure_registered_model()
        if dataset is not None:
            tags = {**tags, "dataset.index_sha256": _frame_digest(dataset.index)}
        self.end_abandoned_runs(experiment)
        all_tags = {
            "git_sha": git_sha() or "unknown",
            contract.OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}",
            contract.CLASS_NAMES_TAG: json.dumps(model.class_names),
            **{
                tag: str(model.card[tag])
                for tag in (contract.IMPORTED_TAG, contract.PIXELS_TAG)
                if tag in model.card
            },
            **tags,
        }

        def log() -> tuple[str, str]:
            with mlflow.start_run(experiment_id=experiment, run_name=run.name) as active:
                mlflow.set_tags(all_tags)
                failpoint("register")
                _log_record(self.client, run, metrics, decision_markdown, dataset)
                with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
                    files = [
                        *_record_files(artifacts),
                        *_model_files(model, reference_images, training_features, Path(tmp)),
                    ]
                    uploads = [  # side by side: each is a round trip to the artifact store
                        pool.submit(self.client.log_artifact, active.info.run_id, str(f), d)
                        for f, d in files
                    ]
                    info = _log_keras(model)
                    for upload in uploads:
                        upload.result()
                registered = self.client.create_model_version(
                    self.name,
                    info.model_uri,
                    run_id=active.info.run_id,
                    tags=all_tags,
                    model_id=info.model_id,
                )
                return active.info.run_id, str(registered.version)

        return self._call("log the candidate", log)

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

    # -- aliases and history -------------------------------------------------------------

    def alias_version(self, alias: str) -> str | None:
        """The version an alias points at, or None."""
        return self._call(
            f"read alias {alias}", lambda: contract.alias_version(self.client, self.name, alias)
        )

    def _tags(self) -> dict[str, str]:
        return self._call("read the tags", lambda: self.client.get_registered_model(self.name).tags)

    def history(self) -> list[dict]:
        """Every alias move, oldest first."""
        self.complete_pending()
        tags = self._tags()
        return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(HISTORY_PREFIX)]

    def _version_exists(self, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._call(
                "find the version", lambda: self.client.get_model_version(self.name, version)
            )
        except MlflowException as exc:
            raise RegistryError(f"{self.name} has no version {version}") from exc

    def promote(
        self,
        version: str,
        reason: str,
        action: str = "promote",
        metrics: dict | None = None,
        expected: object = ANY,
    ) -> None:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        One move as readers see it: the intent is written first, then ``champion`` moves
        (the only step readers act on), then ``previous`` and the history follow; a crash in
        between is completed by the next :meth:`complete_pending`. With ``expected``, a
        compare-and-set: refused with :class:`ChampionMoved` unless the champion is still
        ``expected`` (the version the challenger was judged against; None: no champion).
        """
        self.complete_pending()
        self._version_exists(version)
        current = self.alias_version(CHAMPION)
        if expected is not ANY and current != expected:
            raise ChampionMoved(
                f"the champion is {_label(current)}, not {_label(expected)} as when version "
                f"{version} was judged"
            )
        if current == version:
            raise RegistryError(f"version {version} is already the champion")
        history = [k for k in self._tags() if k.startswith(HISTORY_PREFIX)]
        entry = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "who": _who(),
            "action": action,
            "version": version,
            "reason": reason,
            "from_version": current,
            "metrics": metrics or {},
        }
        intent = {"key": f"{HISTORY_PREFIX}{len(history) + 1:05d}", "entry": entry}
        self._set_tag(contract.PENDING_MOVE_TAG, json.dumps(intent))
        failpoint("promote.intent")
        self._call(
            "move champion",
            lambda: self.client.set_registered_model_alias(self.name, CHAMPION, version),
        )
        self._finish_move(intent)

    def _set_tag(self, key: str, value: str) -> None:
        self._call(
            "write a tag", lambda: self.client.set_registered_model_tag(self.name, key, value)
        )

    def _finish_move(self, intent: dict) -> None:
        """The steps after ``champion`` moved; each may be repeated."""
        entry = intent["entry"]
        if entry["from_version"] is not None:
            self._call(
                "move previous",
                lambda: self.client.set_registered_model_alias(
                    self.name, PREVIOUS, entry["from_version"]
                ),
            )
        self._set_tag(intent["key"], json.dumps(entry))
        self._call(
            "clear the intent",
            lambda: self.client.delete_registered_model_tag(self.name, contract.PENDING_MOVE_TAG),
        )

    def tag_version(self, version: str, key: str, value: str) -> None:
        self._call(
            "tag the version",
            lambda: self.client.set_model_version_tag(self.name, version, key, value[:4900]),
        )

    def complete_pending(self) -> str | None:
        """Complete an alias move a crash cut short (``champion`` had moved), or drop its
        intent (it had not). Returns what was done, or None when nothing was pending."""
        from mlflow.exceptions import MlflowException

        try:
            pending = self._tags().get(contract.PENDING_MOVE_TAG)
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise
        if not pending:
            return None
        intent = json.loads(pending)
        if self.alias_version(CHAMPION) == intent["entry"]["version"]:
            self._finish_move(intent)
            return f"completed the move of champion to version {intent['entry']['version']}"
        self._call(
            "drop the intent",
            lambda: self.client.delete_registered_model_tag(self.name, contract.PENDING_MOVE_TAG),
        )
        return f"dropped an unfinished move to version {intent['entry']['version']}"

    def rollback(self, reason: str, to: str | None = None) -> str:
        """Move the champion back to ``previous`` (or to version ``to``); returns it."""
        self.complete_pending()
        target = to or self.alias_version(PREVIOUS)
        if target is None:
            raise RegistryError("there is no previous version to roll back to")
        self.promote(target, reason, action="rollback")
        return target

    # -- reading -------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first, with its aliases and key metrics."""
        from mlflow.exceptions import MlflowException

        try:
            self.complete_pending()
            aliases = self._call(
                "read aliases", lambda: self.client.get_registered_model(self.name).aliases
            )
        except MlflowException:
            return []
        found = self._call(
            "list versions", lambda: self.client.search_model_versions(f"name='{self.name}'")
        )
        rows = []
        for mv in sorted(found, key=lambda v: int(v.version), reverse=True):
            run = self._call("read the run", lambda mv=mv: self.client.get_run(mv.run_id))
            rows.append(
                VersionInfo(
                    version=str(mv.version),
                    aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    created=time.strftime(
                        "%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)
                    ),
                    run_id=mv.run_id,
                    accuracy=run.data.metrics.get(f"{contract.CHALLENGER_PREFIX}accuracy"),
                    dataset_version=mv.tags.get(contract.DATASET_VERSION_TAG),
                    class_names=json.loads(mv.tags.get(contract.CLASS_NAMES_TAG, "[]")),
                    decision=mv.tags.get(contract.GATE_TAG),
                )
            )
        return rows

    def tagged(self, key: str, value: str) -> list[tuple[str, dict[str, str]]]:
        """(version, tags) of every version whose tag ``key`` is ``value``, newest first."""
        found = self._call(
            "list versions", lambda: self.client.search_model_versions(f"name='{self.name}'")
        )
        return [
            (str(mv.version), dict(mv.tags))
            for mv in sorted(found, key=lambda v: int(v.version), reverse=True)
            if mv.tags.get(key) == value
        ]

    def load(self, ref: str) -> LoadedModel:
        """Load a version (``"3"``) or alias (``"champion"``) with its class names. With a
        ``cache_dir``, a version's files are downloaded once per host (a registered version
        never changes): a run that examines a batch and then fine-tunes downloads it once."""
        import mlflow.keras

        version = ref if ref.isdigit() else self.alias_version(ref)
        if version is None:
            raise RegistryError(f"{self.name} has no version with alias {ref!r}")
        mv = self._call(
            "read the version", lambda: self.client.get_model_version(self.name, version)
        )
        mlflow.set_registry_uri(self.config.registry_uri)
        mlflow.set_tracking_uri(self.config.tracking_uri)
        model = self._call("load the model", lambda: mlflow.keras.load_model(self._files(mv)))
        card = {"registered_model": self.name, "version": version}
        for tag in (contract.IMPORTED_TAG, contract.PIXELS_TAG):  # picks the fine-tune recipe
            if tag in mv.tags:
                card[tag] = mv.tags[tag]
        return LoadedModel(model, json.loads(mv.tags[contract.CLASS_NAMES_TAG]), card)

    def _files(self, mv, keep: int = 4) -> str:
        """Where to load a version from: its copy in ``cache_dir`` (downloaded now if missing;
        the ``keep`` newest copies stay), or its ``models:/`` URI without a cache."""
        import hashlib
        import shutil

        import mlflow.artifacts

        uri = f"models:/{self.name}/{mv.version}"
        cache = self.config.cache_dir
        if cache is None:
            return uri
        key = f"{self.config.registry_uri}|{self.name}|{mv.version}|{mv.source}"
        target = cache / f"v{mv.version}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if (target / "MLmodel").is_file():
            os.utime(target)  # the newest copies are the ones kept
        else:
            cache.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
            try:
                got = self._call(
                    "download the model",
                    lambda: mlflow.artifacts.download_artifacts(uri, dst_path=str(partial)),
                )
                with contextlib.suppress(OSError):  # another process got it first: theirs
                    os.rename(got, target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            copies = sorted(cache.glob("v*-*"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in copies[keep:]:
                shutil.rmtree(old, ignore_errors=True)
        return str(target)

    @property
    def monitoring_experiment(self) -> str:
        return f"{self.name}-monitoring"

    def log_check(
        self,
        run_name: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        files: dict[str, bytes],
    ) -> str:
        """Log one monitoring check (a drift check) as a run of the monitoring experiment:
        its metrics over time are that experiment's charts. Returns the run id."""
        import mlflow

        mlflow.set_tracking_uri(self.config.tracking_uri)
        experiment = self.experiment_id(self.monitoring_experiment)

        def log() -> str:
            with mlflow.start_run(experiment_id=experiment, run_name=run_name) as active:
                mlflow.set_tags(tags)
                mlflow.log_metrics(metrics)
                with tempfile.TemporaryDirectory() as tmp:
                    for name, data in files.items():
                        (Path(tmp) / name).write_bytes(data)
                    mlflow.log_artifacts(tmp)
                return active.info.run_id

        return self._call("log the check", log)

    def check_history(self, metric: str, limit: int = 500) -> list[tuple[float, float]]:
        """(start time in s, value) of ``metric`` over the monitoring runs, oldest first."""

        def read() -> list[tuple[float, float]]:
            found = self.client.get_experiment_by_name(self.monitoring_experiment)
            if found is None:
                return []
            runs = self.client.search_runs(
                [found.experiment_id], max_results=limit, order_by=["attributes.start_time DESC"]
            )
            return sorted(
                (r.info.start_time / 1000, r.data.metrics[metric])
                for r in runs
                if metric in r.data.metrics
            )

        return self._call("read the checks", read)

    def training_features(self, version: str) -> bytes | None:
        """The training features logged with ``version``, or None (registered before Refit
        logged them, or without a dataset)."""

        def read() -> bytes | None:
            return contract.training_features(
                self.client, self.name, version, self.config.tracking_uri
            )

        return self._call("read the training features", read)

    def export(self, ref: str, out: Path) -> Path:
        """Write a version or alias as a Refit model file (.keras, or .h5 for older tools)."""
        return save_model(self.load(ref), out)


def _log_record(
    client,
    run: CandidateRun,
    metrics: dict[str, float],
    decision_markdown: str,
    dataset: Dataset | None,
) -> None:
    """Into the active MLflow run: params, curves per step (one request), metrics, the
    decision, and the dataset version as an input."""
    from mlflow.entities import Metric

    import mlflow

    mlflow.log_params({k: str(v)[:500] for k, v in run.params.items()})
    now = int(time.time() * 1000)
    curves = [
        Metric(key, value, now, step)
        for key, values in run.curves.items()
        for step, value in enumerate(values)
    ]
    if curves:
        client.log_batch(mlflow.active_run().info.run_id, metrics=curves)
    mlflow.log_metrics(metrics)
    mlflow.log_text(decision_markdown, "decision.md")
    if dataset is not None:
        digest = (dataset.version or "")[:36] or None
        frame = mlflow.data.from_pandas(
            dataset.index, source=str(dataset.dir), name="refit-dataset", digest=digest
        )
        mlflow.log_input(frame, context="training")


def _record_files(artifacts: list[Path]) -> list[tuple[Path, str]]:
    """The figures and reports, with the run folder each goes to."""
    return [(p, "evaluation" if p.suffix in (".png", ".json") else "reports") for p in artifacts]


def _model_files(
    model: LoadedModel, reference_images: np.ndarray | None, features: bytes | None, tmp: Path
) -> list[tuple[Path, str]]:
    """The Refit model file and the reference images, where the contract says, written to
    ``tmp``."""
    files = [(save_model(model, tmp / contract.MODEL_FILE_NAME), contract.MODEL_FILE_DIR)]
    if reference_images is not None:
        np.save(images := tmp / contract.REFERENCE_NAME, reference_images.astype(np.uint8))
        files.append((images, contract.REFERENCE_DIR))
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


def _missing(exc: Exception) -> bool:
    """Whether an MLflow error says the thing asked for does not exist."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _is_connection_error(exc: Exception) -> bool:
    """Whether an error means the server could not be reached (worth a retry)."""
    if isinstance(exc, ConnectionError):
        return True
    text = str(exc)
    return any(
        s in text
        for s in (
            "Connection refused",
            "Max retries exceeded",
            "Failed to establish",
            "API request to",
        )
    )


def _label(version: object) -> str:
    return "none" if version is None else f"v{version}"


def _who() -> str:
    try:
        return getpass.getuser()
    except OSError:
        return "refit"
