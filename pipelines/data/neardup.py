"""Near-duplicates by perceptual hash: a photo re-saved, resized or a neighbouring video
frame has a different sha256 but almost the same pHash (``imagehash``, 64 bits).

Two images are near-duplicates when their pHashes differ in at most ``max_distance`` bits.
The dataset's pHashes are kept in a cache beside the workspace (by sha256), so a dataset
image is hashed once, not at every intake; the dataset's own files never change for it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

CHUNK = 2048  # rows of the distance matrix computed at once


def as_ints(hashes) -> np.ndarray:
    """16-hex-digit pHashes as uint64."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def nearest(queries, references) -> tuple[np.ndarray, np.ndarray]:
    """For each query pHash: the smallest Hamming distance to any reference, and its index
    (distance 65 and index -1 when there are no references)."""
    q, r = as_ints(queries), as_ints(references)
    best = np.full(len(q), 65, dtype=np.int64)
    where = np.full(len(q), -1, dtype=np.int64)
    if not len(r):
        return best, where
    for start in range(0, len(q), CHUNK):
        block = np.bitwise_count(q[start : start + CHUNK, None] ^ r[None, :]).astype(np.int64)
        best[start : start + CHUNK] = block.min(axis=1)
        where[start : start + CHUNK] = block.argmin(axis=1)
    return best, where


def groups(hashes, max_distance: int) -> np.ndarray:
    """A group id per pHash: near-duplicates (transitively) share one."""
    h = as_ints(hashes)
    parent = np.arange(len(h))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(h), CHUNK):
        block = np.bitwise_count(h[start : start + CHUNK, None] ^ h[None, :])
        for i, j in zip(*np.nonzero(block <= max_distance), strict=True):
            a, b = root(start + int(i)), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(h))])


def dataset_phashes(dataset_dir: Path, rows, cache: Path) -> list[str]:
    """The pHash of each index row's file (``path``, ``sha256``), cached by sha256."""
    from PIL import Image

    from pipelines.data.ingest import perceptual_hash

    known: dict[str, str] = {}
    if cache.is_file():
        with open(cache, newline="") as handle:
            known = {row["sha256"]: row["phash"] for row in csv.DictReader(handle)}
    missing = [(p, s) for p, s in zip(rows["path"], rows["sha256"], strict=True) if s not in known]
    for rel, sha in missing:
        with Image.open(dataset_dir / rel) as image:
            image.load()
            known[sha] = perceptual_hash(image)
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sha256", "phash"])
            writer.writerows(sorted(known.items()))
        partial.replace(cache)  # never half-written
    return [known[s] for s in rows["sha256"]]
