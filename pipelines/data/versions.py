"""Dataset versions with DVC: the dataset directory is one DVC output (``data.dvc``).

A version is the md5 DVC computes for the whole directory (``<md5>.dir``). After each merge
the directory is added and pushed to the remote, and a record of the version (when, which
batch, how many images per class) is appended to a log in the shared store
(``dataset-versions/``), next to a copy of that version's ``.dvc`` file, so any version can
be listed and restored without git, on any host: a worker whose copy is behind the log
checks out the newest version first (:meth:`DvcStore.sync`), from its cache or the remote.

DVC is driven through its command line (its stable interface), always on the whole
directory: never per file, never ``-R`` (that is what makes DVC slow with many small files).
The remote and cache location are written to ``.dvc/config.local``, which git ignores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from core.objectstore import Store

VERSION_LOG = "versions.jsonl"


class DvcError(RuntimeError):
    """A DVC command failed; the message has its output."""


@dataclass(frozen=True)
class DatasetVersion:
    """One recorded state of the dataset."""

    version: str  # DVC directory md5, e.g. "3f2a...c1.dir"
    created_at: str
    batch_id: str
    files: int
    counts: dict[str, dict[str, int]]  # split -> class -> images
    note: str = ""  # why, for a change that is not a batch (a class removed)


@dataclass(frozen=True)
class DvcStore:
    """The DVC repository holding the dataset, and where versions are recorded."""

    repo: Path  # the git (or DVC-only) repository root
    dataset_dir: Path  # inside repo
    remote: str  # URL or path of the default remote
    cache_dir: Path
    log: Store  # the shared store holding the version log and .dvc copies
    endpoint_url: str | None = None  # of an S3 remote (MinIO, moto)

    def _log_file(self, name: str) -> str:
        return self.log.path("dataset-versions", name)

    @property
    def dvc_file(self) -> Path:
        return self.dataset_dir.with_name(self.dataset_dir.name + ".dvc")

    def _dvc(self, *args: str) -> str:
        command = [str(Path(sys.executable).parent / "dvc"), *args]
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        done = subprocess.run(command, cwd=self.repo, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # DVC's own words, without its support banner
            said = [
                line
                for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "Having any troubles?" not in line
            ]
            raise DvcError(f"`dvc {' '.join(args)}` failed: " + "\n".join(said[-10:]))
        return done.stdout

    def ensure_initialized(self) -> None:
        """``dvc init`` if needed, then point the cache and the default remote at settings.

        The remote and cache go to ``.dvc/config.local`` (git-ignored), written directly in
        DVC's config format: one file write instead of four DVC start-ups per intake.
        """
        if not (self.repo / ".dvc").is_dir():
            scm = [] if (self.repo / ".git").exists() else ["--no-scm"]
            self._dvc("init", "-q", *scm)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if "://" not in self.remote:
            Path(self.remote).mkdir(parents=True, exist_ok=True)
        config = self.repo / ".dvc" / "config.local"
        endpoint = f"    endpointurl = {self.endpoint_url}\n" if self.endpoint_url else ""
        wanted = (
            f'[cache]\n    dir = {self.cache_dir}\n    type = "reflink,hardlink,copy"\n'
            f"[core]\n    remote = refit\n"
            f"['remote \"refit\"']\n    url = {self.remote}\n{endpoint}"
        )
        if not config.is_file() or config.read_text() != wanted:
            config.write_text(wanted)

    def current_version(self) -> str | None:
        """The version ``data.dvc`` points at, or None before the first dataset."""
        if not self.dvc_file.is_file():
            return None
        outs = yaml.safe_load(self.dvc_file.read_text()).get("outs") or [{}]
        return outs[0].get("md5")

    def current_record(self) -> DatasetVersion | None:
        """The recorded version ``data.dvc`` points at (None if it points at none)."""
        current = self.current_version()
        return next((v for v in reversed(self.versions()) if v.version == current), None)

    def restore_pointer(self) -> bool:
        """Point ``data.dvc`` back at the last recorded version if a crash left it ahead
        (``dvc add`` done, version never recorded). Returns whether it had to."""
        recorded = self.versions()
        current = self.current_version()
        if not recorded or current is None or current in {v.version for v in recorded}:
            return False  # (no data.dvc at all: a fresh copy, which `sync` checks out)
        self._restore_dvc_file(recorded[-1].version)
        return True

    def _restore_dvc_file(self, version: str) -> None:
        saved = self.log.read_bytes(self._log_file(f"{version}.dvc"))
        if saved is None:
            raise DvcError(f"the version log has no .dvc file for {version}")
        tmp = self.dvc_file.with_name(f".{self.dvc_file.name}.tmp")
        tmp.write_bytes(saved)
        os.replace(tmp, self.dvc_file)

    def sync(self) -> DatasetVersion | None:
        """Bring this copy to the newest recorded version if another host recorded one since
        (fetched from the cache or the remote). Returns the version checked out, or None when
        this copy was current."""
        recorded = self.versions()
        if not recorded or self.current_version() == recorded[-1].version:
            return None
        self.ensure_initialized()  # a fresh copy: DVC, its cache and remote first
        return self.checkout(recorded[-1].version)

    def add_version(
        self, batch_id: str, counts: dict[str, dict[str, int]], note: str = ""
    ) -> DatasetVersion:
        """``dvc add`` + ``dvc push`` the dataset directory and record the version."""
        self._dvc("add", str(self.dataset_dir.relative_to(self.repo)))
        self._dvc("push", str(self.dvc_file.relative_to(self.repo)))
        version = self.current_version()
        assert version is not None
        record = DatasetVersion(
            version=version,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            batch_id=batch_id,
            files=sum(sum(c.values()) for c in counts.values()),
            counts=counts,
            note=note,
        )
        self.log.write_bytes(self._log_file(f"{version}.dvc"), self.dvc_file.read_bytes())
        # one writer at a time (the dataset lock): read, append, write whole
        before = self.log.read_bytes(self._log_file(VERSION_LOG)) or b""
        line = (json.dumps(asdict(record)) + "\n").encode()
        self.log.write_bytes(self._log_file(VERSION_LOG), before + line)
        return record

    def versions(self) -> list[DatasetVersion]:
        """Every recorded version, oldest first."""
        data = self.log.read_bytes(self._log_file(VERSION_LOG))
        if data is None:
            return []
        return [
            DatasetVersion(**json.loads(line))
            for line in data.decode().splitlines()
            if line.strip()
        ]

    def find(self, version: str) -> DatasetVersion:
        """The recorded version whose id starts with ``version`` (a unique prefix is enough)."""
        matches = {v.version: v for v in self.versions() if v.version.startswith(version)}
        if len(matches) != 1:
            known = ", ".join(v.version[:12] for v in self.versions()) or "none"
            what = "no" if not matches else "more than one"
            raise DvcError(f"{what} dataset version matches {version!r}; known: {known}")
        return next(iter(matches.values()))

    def checkout(self, version: str) -> DatasetVersion:
        """Restore the dataset directory to a recorded version.

        One ``dvc pull``: DVC fetches the version's data first and checks the directory out
        only when every file arrived, so a missing version never costs the current data;
        ``data.dvc`` is put back if it fails (a later sync tries again).
        """
        record = self.find(version)
        current = self.dvc_file.read_bytes() if self.dvc_file.is_file() else None
        self._restore_dvc_file(record.version)
        try:
            self._dvc("pull", "--force", str(self.dvc_file.relative_to(self.repo)))
        except DvcError:
            if current is not None:
                self.dvc_file.write_bytes(current)
            raise
        return record
