"""The shared store: where state every host must see lives (the submission queue, the
dataset's version log; the DVC remote and MLflow's artifacts beside them).

It is an fsspec URL: a local folder by default (the workspace), ``s3://bucket/prefix`` for a
team (MinIO, a cloud bucket). Credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, or any other way boto finds them); the endpoint from
``store_endpoint_url``. Both backends go through one fsspec interface, so every caller has
one code path.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cached_property


class StoreError(RuntimeError):
    """The shared store cannot be reached or refused a request; says which setting."""


@dataclass(frozen=True)
class Store:
    url: str  # fsspec URL of the root, e.g. s3://refit/team or /home/me/.refit
    endpoint_url: str | None = None

    @property
    def remote(self) -> bool:
        return "://" in self.url and not self.url.startswith("file://")

    @cached_property
    def fs(self):
        import fsspec

        if not self.remote:
            return fsspec.filesystem("file", auto_mkdir=True)
        protocol = self.url.split("://", 1)[0]
        options: dict = {}
        if protocol == "s3":
            # fresh listings: another host may have just written
            options = {"use_listings_cache": False, "skip_instance_cache": True}
            if self.endpoint_url:
                options["endpoint_url"] = self.endpoint_url
        return fsspec.filesystem(protocol, **options)

    def path(self, *parts: str) -> str:
        root = self.url.removeprefix("file://").rstrip("/")
        return "/".join([root, *[p.strip("/") for p in parts if p]])

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.url}{where}"

    def _wrap(self, exc: Exception, what: str) -> StoreError:
        return StoreError(
            f"the shared store {self.describe()} (REFIT_STORE_URL, REFIT_STORE_ENDPOINT_URL, "
            f"AWS_* credentials): {what} failed: {type(exc).__name__}: {exc}"
        )

    def read_bytes(self, path: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._wrap(exc, f"reading {path}") from exc

    def read_json(self, path: str):
        data = self.read_bytes(path)
        return None if data is None else json.loads(data)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Whole or not at all: written beside, then moved (one PUT on S3 is atomic)."""
        try:
            if self.remote:
                self.fs.pipe_file(path, data)
                return
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        except Exception as exc:
            raise self._wrap(exc, f"writing {path}") from exc

    def write_json(self, path: str, value) -> None:
        self.write_bytes(path, json.dumps(value, indent=2).encode())

    def names(self, path: str) -> list[str]:
        """The names directly under ``path`` (none when it does not exist)."""
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._wrap(exc, f"listing {path}") from exc

    def exists(self, path: str) -> bool:
        try:
            return self.fs.exists(path)
        except Exception as exc:
            raise self._wrap(exc, f"looking for {path}") from exc

    def put(self, local, path: str) -> None:
        """Upload a file or a folder (its contents land under ``path``)."""
        from pathlib import Path

        local = Path(local)
        try:
            if local.is_dir():
                for file in sorted(p for p in local.rglob("*") if p.is_file()):
                    self.fs.put_file(str(file), f"{path}/{file.relative_to(local).as_posix()}")
            else:
                self.fs.put_file(str(local), path)
        except Exception as exc:
            raise self._wrap(exc, f"uploading {local} to {path}") from exc

    def get(self, path: str, local) -> None:
        """Download a file or a folder to ``local``."""
        from pathlib import Path

        local = Path(local)
        root = self.fs._strip_protocol(path).rstrip("/")
        try:
            found = [self.fs._strip_protocol(f) for f in self.fs.find(path)]
            if not found:
                raise FileNotFoundError(path)
            for file in found:
                target = local if file == root else local / file[len(root) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(file, str(target))
        except Exception as exc:
            raise self._wrap(exc, f"downloading {path}") from exc

    def delete(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except Exception as exc:
            raise self._wrap(exc, f"deleting {path}") from exc

    def check(self) -> None:
        """Raise StoreError unless the store answers a listing and a write."""
        probe = self.path(".refit-probe")
        self.write_bytes(probe, b"ok")
        self.names(self.path())
        self.delete(probe)
