"""The champion in memory: load it from the MLflow registry by alias, warm it, swap it.

:class:`ChampionHolder` keeps one immutable :class:`Champion` (model, engine, class names,
version). A reload loads and warms the new version *beside* the old one and then replaces
the reference in one assignment, so every request is answered by one complete model. If the
new version fails to load, the old one keeps serving and :attr:`ChampionHolder.error` says
why. A watcher thread polls the alias; the admin endpoint calls :meth:`refresh` at once.

Serving reads the registry only: no training code is imported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import contract
from core.contract import CHAMPION
from pipelines.models.engine import OnnxEngine
from serving.engines import (
    Engine,
    EngineChoice,
    KerasEngine,
    best_engine,
    inference_threads,
    limit_tensorflow_threads,
)

log = logging.getLogger("refit.serving")


class NoChampion(RuntimeError):
    """The registry has no champion yet (or cannot be reached)."""


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    class_names: list[str]
    input_size: tuple[int, int]  # height, width
    engine: Engine
    engine_note: str
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    dataset_version: str | None = None
    loaded_at: float = field(default_factory=time.time)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.engine(images)

    def rows(self, images: np.ndarray, with_features: bool) -> np.ndarray:
        """[version, p_0 .. p_K-1 (, features)] per uint8 image: what ``classify`` answers
        (all NaN when the images are not of this model's input size)."""
        if images.shape[1:3] != self.input_size:
            return np.full((len(images), 1), np.nan, dtype=np.float32)
        probs, features = self.engine(images)
        version = np.full((len(images), 1), float(self.version), dtype=np.float32)
        columns = [version, probs.astype(np.float32)]
        if with_features:  # for the prediction log, from the same call
            columns.append(features.astype(np.float32))
        return np.concatenate(columns, axis=1)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "classes": self.class_names,
            "input_size": list(self.input_size),
            "engine": self.engine.name,
            "engine_note": getattr(self.engine, "note", self.engine_note),
            "run_id": self.run_id,
            "holdout_metrics": self.metrics,
            "dataset_version": self.dataset_version,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.loaded_at)),
        }


class Deferred:
    """An engine loaded on its first call (then checked as at load; Keras if that fails)."""

    def __init__(self, load, note: str) -> None:
        self._load = load
        self._choice: EngineChoice | None = None
        self._lock = threading.Lock()
        self.note = note

    @property
    def name(self) -> str:
        return self._choice.engine.name if self._choice else "onnx"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._choice is None:
            with self._lock:
                if self._choice is None:
                    self._choice = self._load()
                    self.note = self._choice.note
        return self._choice.engine(images)


class RegistrySource:
    """Reads the champion's version and files from the MLflow registry."""

    def __init__(self, tracking_uri: str, registry_uri: str, name: str) -> None:
        from mlflow import MlflowClient

        self.name = name
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)

    @classmethod
    def from_settings(cls, settings) -> RegistrySource:
        """The registry ``core.settings.Settings`` point at."""
        return cls(
            str(settings.mlflow_tracking_uri),
            str(settings.mlflow_registry_uri),
            settings.registered_model_name,
        )

    def champion_version(self) -> str | None:
        return contract.alias_version(self.client, self.name, CHAMPION)

    def load(
        self,
        version: str,
        engine: str,
        tolerance: float,
        threads: int = 0,
        registered_only: bool = False,
        deferred: bool = False,
    ) -> Champion | None:
        """Load ``version`` with its engine, warmed: the ONNX file built at registration
        (no TensorFlow work), else Keras with the reason, else (a version registered before
        engines were built) converted here as before. ``registered_only``: the registered
        ONNX engine or None. ``deferred``: a registered engine whose file is intact is
        loaded and checked on its first call instead (the classifier worker, when the
        public worker serves such versions: a swap then costs this worker registry reads
        only)."""
        mv = self.client.get_model_version(self.name, version)
        run = self.client.get_run(mv.run_id)
        root = run.info.artifact_uri  # files by URI: no registry read per file
        class_names = json.loads(mv.tags[contract.CLASS_NAMES_TAG])
        with tempfile.TemporaryDirectory() as tmp:
            found = None
            if engine != "keras":
                found = self._registered_engine(root, tmp, tolerance, threads, deferred)
            if isinstance(found, tuple):
                choice, reference, outputs = found
                if not deferred:  # warm at batch 1 (its check here ran batch N)
                    choice.engine(reference[:1])
            elif registered_only:
                return None
            else:
                model = self._keras_model(root, tmp)
                reference = self._reference_images(root, tmp, model.input_shape[1:3])
                if found is None:
                    choice = best_engine(model, reference, engine, tolerance, threads)
                else:
                    choice = EngineChoice(KerasEngine(model), None, f"{found}: using Keras")
                # warm at batch 1 and batch N
                outputs = choice.engine(reference[:1])[0].shape[-1]
                choice.engine(reference)
        if outputs != len(class_names):
            raise ValueError(
                f"version {version}: {outputs} outputs but {len(class_names)} class names"
            )
        prefix = contract.CHALLENGER_PREFIX
        metrics = {
            k.removeprefix(prefix): v
            for k, v in run.data.metrics.items()
            if k.startswith(prefix) and "recall." not in k
        }
        return Champion(
            name=self.name,
            version=str(version),
            class_names=class_names,
            input_size=tuple(reference.shape[1:3]),
            engine=choice.engine,
            engine_note=f"{choice.note}, {threads} threads" if threads else choice.note,
            run_id=mv.run_id,
            metrics=metrics,
            dataset_version=mv.tags.get(contract.DATASET_VERSION_TAG),
        )

    def _download(self, root: str, artifact: str, tmp: str) -> Path:
        """``artifact`` of the run whose artifact URI is ``root``."""
        import mlflow.artifacts

        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{root}/{artifact}", dst_path=tmp, tracking_uri=self.tracking_uri
            )
        )

    def _keras_model(self, root: str, tmp: str):
        import keras

        path = self._download(root, contract.MODEL_FILE_ARTIFACT, tmp)
        return keras.saving.load_model(path, compile=False, safe_mode=True)

    def _registered_engine(
        self, root: str, tmp: str, tolerance: float, threads: int, deferred: bool = False
    ):
        """The engine built at registration, the reference images it was checked on and its
        number of outputs; None for a version registered before engines were (convert it
        here); or why it cannot be used (a string)."""
        import mlflow.artifacts

        files = mlflow.artifacts.list_artifacts(
            artifact_uri=f"{root}/{contract.ENGINE_DIR}", tracking_uri=self.tracking_uri
        )
        present = {a.path for a in files}
        if contract.ENGINE_CHECK_ARTIFACT not in present:
            return None
        check = json.loads(self._download(root, contract.ENGINE_CHECK_ARTIFACT, tmp).read_text())
        if "error" in check:
            return f"no ONNX engine: {check['error']}"
        if check["max_abs_diff"] > tolerance:
            return f"ONNX differs from Keras by {check['max_abs_diff']:.1e} > {tolerance:.0e}"
        if not {contract.ONNX_ARTIFACT, contract.EXPECTED_ARTIFACT} <= present:
            return "the registered ONNX engine is missing"
        data = self._download(root, contract.ONNX_ARTIFACT, tmp).read_bytes()
        expected = np.load(
            self._download(root, contract.EXPECTED_ARTIFACT, tmp), allow_pickle=False
        )
        images = self._download(root, contract.REFERENCE_ARTIFACT, tmp)
        if hashlib.sha256(data).hexdigest() != check["sha256"]:
            return "the registered ONNX file is corrupt (its sha256 differs from its check)"
        reference = np.load(images, allow_pickle=False)
        if deferred:
            load = lambda: self._checked(data, reference, expected, tolerance, threads, root)  # noqa: E731
            note = "ONNX Runtime, built at registration (loaded here on first use)"
            return EngineChoice(Deferred(load, note), None, note), reference, expected.shape[-1]
        found = self._checked(data, reference, expected, tolerance, threads)
        if isinstance(found, str):
            return found
        return found, reference, expected.shape[-1]

    def _checked(self, data, reference, expected, tolerance, threads, fallback_root=None):
        """The ONNX engine if it loads and agrees with Keras on ``reference`` here, else why
        (or, given ``fallback_root``, the run's Keras model with why)."""
        try:
            engine = OnnxEngine(data, threads)
            diff = float(np.abs(engine(reference)[0] - expected).max())
            why = f"the registered ONNX engine differs from Keras by {diff:.1e} here"
        except Exception as exc:
            diff, why = float("inf"), f"the registered ONNX engine failed to load: {exc}"
        if diff <= tolerance:
            note = f"ONNX Runtime, built at registration (max diff {diff:.1e} vs Keras)"
            return EngineChoice(engine, diff, note)
        if fallback_root is None:
            return why
        with tempfile.TemporaryDirectory() as tmp:
            model = self._keras_model(fallback_root, tmp)
        return EngineChoice(KerasEngine(model), None, f"{why}: using Keras")

    def class_names(self, version: str) -> list[str]:
        return json.loads(
            self.client.get_model_version(self.name, version).tags[contract.CLASS_NAMES_TAG]
        )

    def holdout_accuracy(self, version: str) -> float | None:
        return contract.holdout_accuracy(self.client, self.name, version)

    def training_features(self, version: str) -> bytes | None:
        """The training features logged with ``version`` (None for older versions)."""
        return contract.training_features(self.client, self.name, version, self.tracking_uri)

    def download_model_file(
        self, ref: str, dst: str, artifact: str = contract.MODEL_FILE_ARTIFACT
    ) -> tuple[str, Path]:
        """A version's (or alias's) Refit model file, or another ``artifact`` of its run;
        returns (version, path)."""
        import mlflow.artifacts

        version = self.champion_version() if ref == CHAMPION else ref
        if version is None:
            raise NoChampion("there is no champion yet")
        mv = self.client.get_model_version(self.name, version)
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path=artifact,
            dst_path=dst,
            tracking_uri=self.tracking_uri,
        )
        return version, Path(path)

    def _reference_images(self, root: str, tmp: str, size: tuple[int, int]) -> np.ndarray:
        """Holdout images logged with the version, or seeded synthetic ones if none were."""
        try:
            images = np.load(
                self._download(root, contract.REFERENCE_ARTIFACT, tmp), allow_pickle=False
            )
            if images.dtype == np.uint8 and images.shape[1:] == (*size, 3):
                return images
        except Exception:  # an older version without reference images
            pass
        return np.random.default_rng(0).integers(0, 256, (32, *size, 3), dtype=np.uint8)


class ChampionHolder:
    """The serving champion, reloaded when the registry alias moves."""

    def __init__(
        self,
        source: RegistrySource,
        engine: str = "auto",
        tolerance: float = 1e-5,
        threads: int = 0,
        registered_only: bool = False,
        deferred: bool = False,
    ):
        """``registered_only``: hold only engines built at registration (no TensorFlow in
        this process); a version without one leaves the holder empty. ``deferred``: load a
        registered engine on its first call (:meth:`RegistrySource.load`)."""
        self.source = source
        self.registered_only = registered_only
        self.deferred = deferred
        self._without: str | None = None  # the version found to have no registered engine
        self.engine = engine
        self.tolerance = tolerance
        self.threads = inference_threads(threads)
        limit_tensorflow_threads(self.threads)
        self._current: Champion | None = None
        self._reload_lock = threading.Lock()
        self.error: str | None = None

    @property
    def current(self) -> Champion | None:
        return self._current

    def refresh(self) -> dict:
        """Load the alias's version if it differs from the one serving. Never raises."""
        with self._reload_lock:
            before = self._current.version if self._current else None
            try:
                version = self.source.champion_version()
            except Exception as exc:
                self.error = f"cannot read the registry: {exc}"
                log.warning(self.error)
                return self._result(before, changed=False)
            if version is None:
                self.error = (
                    None
                    if before
                    else (
                        f"no champion yet: {self.source.name!r} has no version with "
                        f"alias {CHAMPION!r}"
                    )
                )
                return self._result(before, changed=False)
            if version in (before, self._without):
                self.error = None
                return self._result(before, changed=False)
            started = time.perf_counter()
            try:
                loaded = self.source.load(
                    version,
                    self.engine,
                    self.tolerance,
                    self.threads,
                    self.registered_only,
                    self.deferred,
                )
            except Exception as exc:
                self.error = f"version {version} failed to load, still serving {before}: {exc}"
                log.error(self.error)
                return self._result(before, changed=False)
            if loaded is None:  # registered_only, and this version has no registered engine
                self._current, self._without = None, version
                return self._result(None, changed=before is not None, previous=before)
            self._current = loaded  # the swap: one reference assignment
            self.error = None
            log.info(
                "champion %s -> %s (%s) in %.1f s",
                before,
                version,
                loaded.engine_note,
                time.perf_counter() - started,
            )
            return self._result(version, changed=True, previous=before)

    def _result(self, version: str | None, changed: bool, previous: str | None = None) -> dict:
        return {"version": version, "changed": changed, "previous": previous, "error": self.error}

    def watch(self, interval_s: float) -> threading.Thread:
        """Poll the alias every ``interval_s`` seconds in a daemon thread."""

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                self.refresh()

        thread = threading.Thread(target=loop, name="champion-watcher", daemon=True)
        thread.start()
        return thread
