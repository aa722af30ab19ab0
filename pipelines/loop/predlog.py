"""The prediction log: what the champion saw in production, for drift checks and labelling.

Serving hands each answered request to a :class:`LogWriter`, which samples it, queues it and
returns at once; a background thread writes what it holds every ``loop.flush_s``. In the
log's store (a folder or ``s3://``):

- ``images/<sha256[:2]>/<sha256><suffix>``: each image as uploaded, content-addressed;
- ``entries/<UTC time>-<host>-<pid>-<seq>.jsonl``: one line per logged prediction (image
  id, time, champion version, top-k labels with probabilities, margin, entropy, and the
  image's features as base64 float16), written whole after its images.

Nothing is written half: files go whole or not at all (:class:`core.objectstore.Store`), and
a reader skips a line it cannot parse (a file cut by something else) and counts it. The log
keeps to ``loop.max_log_bytes`` and ``loop.max_log_age_days``: the oldest entry files go
first, then the images no remaining entry may need. A full disk never fails a request: the
writer frees the oldest entries and tries once more, else drops the entries and counts them.
Numpy only: serving imports this module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import queue
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("refit.predlog")

ENTRIES, IMAGES = "entries", "images"
FLUSH_AT = 256  # entries written at once at the latest
PRUNE_EVERY_S = 60.0
PRUNE_TO = 0.9  # once over the size cap, prune down to this share of it
GRACE_S = 60.0  # an image younger than this is kept even if no entry names it yet
KNOWN_S = 60.0  # an image this writer stored or found this recently is not looked up again
IMAGE_FIELD = re.compile(r'"image": "images/([^"]+)"')
SUFFIXES = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"GI": ".gif", b"BM": ".bmp", b"RI": ".webp"}


def image_id(data: bytes) -> str:
    """An image's id in the log: the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _suffix(data: bytes) -> str:
    return SUFFIXES.get(data[:2], ".tif" if data[:2] in (b"II", b"MM") else ".img")


def encode_features(row: np.ndarray) -> str:
    return base64.b64encode(row.astype("<f2").tobytes()).decode()


def decode_features(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def make_entry(
    data: bytes, name: str, version: str, classes: list[str], probs, features, top_k: int = 5
) -> tuple[dict, bytes]:
    """One log line for an answered image, and the bytes to store under its id."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs)
    top = order[: max(1, min(top_k, len(classes)))]
    margin = float(probs[order[0]] - probs[order[1]]) if len(probs) > 1 else 1.0
    entropy = float(-(probs * np.log(np.clip(probs, 1e-12, 1))).sum())
    sha = image_id(data)
    entry = {
        "id": sha,
        "image": f"{IMAGES}/{sha[:2]}/{sha}{_suffix(data)}",
        "name": Path(name).name,
        "time": round(time.time(), 3),
        "version": str(version),
        "labels": [classes[i] for i in top],
        "probs": [round(float(probs[i]), 5) for i in top],
        "margin": round(margin, 5),
        "entropy": round(entropy, 5),
        "features": encode_features(np.asarray(features)),
    }
    return entry, data


@dataclass
class WriterStats:
    logged: int = 0  # entries written
    dropped: int = 0  # entries lost: queue full, or the store refused even after pruning
    pruned_files: int = 0  # entry and image files removed by retention
    last_error: str | None = None


class LogWriter:
    """Samples answered requests and writes them off the request path."""

    def __init__(self, store, config, start: bool = True) -> None:
        self.store, self.config = store, config
        self.stats = WriterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_pending)
        self._prefix = f"{socket.gethostname()}-{os.getpid()}"
        self._seq = 0
        self._size: int | None = None  # bytes in the log, measured at the first prune
        self._pruned_at = 0.0
        # image path -> when this writer last stored or found it. Its entries name the image,
        # and retention removes the oldest entries first, so the image stays while they do.
        self._known: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        if start:
            self._thread.start()

    def record(self, uploads, version: str, classes: list[str], probs, features) -> None:
        """Queue the sampled images of one answered request. Never blocks, never raises."""
        for (name, data), p, f in zip(uploads, probs, features, strict=True):
            if random.random() >= self.config.sample_rate:
                continue
            try:
                self._queue.put_nowait((name, data, version, classes, p, f))
            except queue.Full:
                self.stats.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.flush(wait_s=self.config.flush_s)

    def flush(self, wait_s: float = 0.0) -> int:
        """Write what is queued (waiting up to ``wait_s`` for the first item); returns the
        number of entries written."""
        items = []
        deadline = time.monotonic() + wait_s
        while len(items) < FLUSH_AT:
            try:
                timeout = max(0.0, deadline - time.monotonic())
                items.append(
                    self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        if not items:
            return 0
        written = 0
        try:
            written = self._write(items)
        except Exception:  # a full disk, the store down: free space once, then give up
            try:
                self.prune(force=True)
                written = self._write(items)
            except Exception as exc:
                self.stats.dropped += len(items)
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("prediction log: dropped %d entries: %s", len(items), exc)
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S or self._over_cap():
            self._safe_prune()
        return written

    def _write(self, items) -> int:
        lines, size, now, looked_up = [], 0, time.monotonic(), set()
        if len(self._known) > 100_000:
            self._known = {k: t for k, t in self._known.items() if now - t < KNOWN_S}
        for name, data, version, classes, p, f in items:
            entry, body = make_entry(data, name, version, classes, p, f)
            path = self.store.path(entry["image"])
            fresh = now - self._known.get(path, -KNOWN_S) < KNOWN_S
            if not fresh and path not in looked_up:  # one lookup per image
                if not self.store.exists(path):
                    self.store.write_bytes(path, body)
                    size += len(body)
                looked_up.add(path)
            lines.append(json.dumps(entry))
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        text = ("\n".join(lines) + "\n").encode()
        self.store.write_bytes(
            self.store.path(ENTRIES, f"{stamp}-{self._prefix}-{self._seq:06d}.jsonl"), text
        )
        self._known |= dict.fromkeys(looked_up, now)  # named by an entry only now
        self.stats.logged += len(lines)
        if self._size is not None:
            self._size += size + len(text)
        return len(lines)

    def _over_cap(self) -> bool:
        return self._size is not None and self._size > self.config.max_log_bytes

    def _safe_prune(self) -> None:
        try:
            self.prune()
        except Exception as exc:
            self.stats.last_error = f"pruning: {exc}"
            log.warning("prediction log: pruning failed: %s", exc)

    def prune(self, force: bool = False) -> int:
        """Apply retention; ``force`` removes at least the oldest entry file (disk full)."""
        self._pruned_at = time.monotonic()
        removed, self._size = prune(
            self.store, self.config.max_log_bytes, self.config.max_log_age_days * 86400, force
        )
        self.stats.pruned_files += removed
        if removed:
            self._known.clear()  # images may have gone with their entries
        return removed

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is left and stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        while self.flush():
            pass


def _files(store, folder: str) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of every file under ``folder``, oldest first."""
    try:
        found = store.fs.find(store.path(folder), detail=True)
    except FileNotFoundError:
        return []
    rows = []
    for path, info in found.items():
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        rows.append((path, int(info.get("size") or 0), float(stamp)))
    return sorted(rows, key=lambda row: (row[2], row[0]))


def prune(store, max_bytes: int, max_age_s: float, force: bool = False) -> tuple[int, int]:
    """Remove the oldest entry files (past ``max_age_s``, or while over ``max_bytes``), then
    the images no remaining entry names (unless younger than ``GRACE_S``, their entry may be
    on its way; ``force``, for a full disk, waits for nothing). Returns (files removed,
    bytes left)."""
    entries, images = _files(store, ENTRIES), _files(store, IMAGES)
    total = sum(size for _, size, _ in entries + images)
    now, removed = time.time(), 0
    target = max_bytes * PRUNE_TO if total > max_bytes else max_bytes
    while entries and (
        now - entries[0][2] > max_age_s or total > target or (force and removed == 0)
    ):
        path, size, _ = entries.pop(0)
        store.fs.rm_file(path)
        total, removed = total - size, removed + 1
    if not removed:
        return 0, total
    named = set()
    for path, _, _ in entries:
        named |= set(IMAGE_FIELD.findall((store.read_bytes(path) or b"").decode(errors="replace")))
    for path, size, stamp in images:
        old = force or now - stamp >= GRACE_S
        if old and path.rsplit(f"/{IMAGES}/", 1)[-1] not in named:
            store.fs.rm_file(path)
            total, removed = total - size, removed + 1
    return removed, total


@dataclass
class LogView:
    """The log as read: entries oldest first (the newest per image), their features stacked,
    and how many lines could not be read."""

    entries: list[dict] = field(default_factory=list)
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    unreadable: int = 0

    def __len__(self) -> int:
        return len(self.entries)


def read_log(store, version: str | None = None, newest: int | None = None) -> LogView:
    """The log's entries (of champion ``version`` only, if given; the ``newest`` N)."""
    by_id: dict[str, dict] = {}
    unreadable = 0
    for path, _, _ in _files(store, ENTRIES):
        data = store.read_bytes(path)
        if data is None:  # pruned while we read
            continue
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entry["id"], entry["features"]
            except (ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            if version is None or entry.get("version") == str(version):
                by_id.pop(entry["id"], None)
                by_id[entry["id"]] = entry
    entries = list(by_id.values())[-newest:] if newest else list(by_id.values())
    features = [decode_features(e["features"]) for e in entries]
    dims = {len(f) for f in features}
    if len(dims) > 1:  # versions with different feature sizes: keep the newest size
        newest_dim = len(features[-1])
        keep = [i for i, f in enumerate(features) if len(f) == newest_dim]
        entries, features = [entries[i] for i in keep], [features[i] for i in keep]
    stacked = np.stack(features) if features else np.zeros((0, 0), np.float32)
    return LogView(entries, stacked, unreadable)


def image_bytes(store, entry: dict) -> bytes | None:
    """The logged image of ``entry``, or None when retention removed it."""
    return store.read_bytes(store.path(entry["image"]))
