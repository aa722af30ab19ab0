"""The registry's read side: the versions, and a version's model file, training features or
export (downloaded once per host); aliases and the history are its moves' (``registry_moves``)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core import contract
from pipelines.judge.registry_client import RegistryError
from pipelines.judge.registry_moves import RegistryMoves
from pipelines.models.modelfile import LoadedModel, save_model


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
    approval: str | None = None  # pending / approved / rejected / timed-out, when asked


class RegistryReads(RegistryMoves):
    """What a registered model holds, read."""

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
                    approval=mv.tags.get(contract.APPROVAL_TAG),
                )
            )
        return rows

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

    def training_features(self, version: str) -> bytes | None:
        """The training features logged with ``version``, or None (registered before Refit
        logged them, or without a dataset)."""

        def read() -> bytes | None:
            return contract.training_features(
                self.client, self.name, version, self.config.tracking_uri
            )

        return self._call("read the training features", read)

    def holdout_accuracy(self, version: str) -> float | None:
        """The holdout accuracy the gate measured for ``version`` (None if none was logged)."""
        return self._call(
            "read the holdout accuracy",
            lambda: contract.holdout_accuracy(self.client, self.name, version),
        )

    def export(self, ref: str, out: Path) -> Path:
        """Write a version or alias as a Refit model file (.keras, or .h5 for older tools)."""
        return save_model(self.load(ref), out)
