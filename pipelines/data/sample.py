"""The embedded CIFAR-10 sample: cut it reproducibly from the full tarball, and unpack it.

The sample is what the demo and the tests run on without any network. It is cut from the
CIFAR-10 training images (Krizhevsky, 2009) into three parts:

- ``seed/train/<class>/``: the starting dataset, the 9 classes other than ``truck``
  (replay material for fine-tuning);
- ``seed/holdout/<class>/``: a fixed holdout of all 10 classes that no model of ours ever
  trains on;
- ``incoming/<class>/``: a batch a user would upload, bringing ``truck`` plus more images of
  the old classes.

The three parts are disjoint, files keep their source names (``<class>/NNNN.jpg``) so any
image can be traced back to the full tarball, and the archive is byte-for-byte reproducible
from the same source and seed.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NEW_CLASS = "truck"
SEED_CLASSES: tuple[str, ...] = tuple(c for c in CIFAR10_CLASSES if c != NEW_CLASS)


@dataclass(frozen=True)
class SamplePlan:
    """How many images per class go into each part of the sample."""

    holdout_per_class: int = 200
    seed_train_per_class: int = 500
    incoming_new_class: int = 500
    incoming_per_old_class: int = 56

    def expected_counts(self) -> dict[str, dict[str, int]]:
        """Part -> class -> number of images, as :func:`unpack_sample` must find them."""
        return {
            "seed/holdout": {c: self.holdout_per_class for c in CIFAR10_CLASSES},
            "seed/train": {c: self.seed_train_per_class for c in SEED_CLASSES},
            "incoming": {
                c: self.incoming_new_class if c == NEW_CLASS else self.incoming_per_old_class
                for c in CIFAR10_CLASSES
            },
        }


def _source_members(source: tarfile.TarFile) -> dict[str, list[tarfile.TarInfo]]:
    """Image members of the CIFAR-10 tarball by class, sorted by name."""
    by_class: dict[str, list[tarfile.TarInfo]] = {c: [] for c in CIFAR10_CLASSES}
    for member in source.getmembers():
        parts = PurePosixPath(member.name).parts
        if member.isfile() and len(parts) == 3 and parts[0] == "train" and parts[1] in by_class:
            by_class[parts[1]].append(member)
    for members in by_class.values():
        members.sort(key=lambda m: m.name)
    return by_class


def _assign(
    cls: str, members: list[tarfile.TarInfo], plan: SamplePlan, seed: int
) -> list[tuple[str, tarfile.TarInfo]]:
    """Pick this class's images for each part: a seeded shuffle, then consecutive slices."""
    shuffled = list(members)
    random.Random(f"{seed}:{cls}").shuffle(shuffled)
    sizes = [("seed/holdout", plan.holdout_per_class)]
    if cls == NEW_CLASS:
        sizes.append(("incoming", plan.incoming_new_class))
    else:
        sizes += [
            ("seed/train", plan.seed_train_per_class),
            ("incoming", plan.incoming_per_old_class),
        ]
    needed = sum(n for _, n in sizes)
    if needed > len(shuffled):
        raise ValueError(f"class {cls!r} has {len(shuffled)} images, the plan needs {needed}")
    picked, start = [], 0
    for part, n in sizes:
        picked += [(part, m) for m in shuffled[start : start + n]]
        start += n
    return picked


def cut_sample(source: Path, dest: Path, seed: int, plan: SamplePlan = SamplePlan()) -> Counter:
    """Cut the embedded sample from the CIFAR-10 tarball into a reproducible ``.tar.gz``.

    Args:
        source: the full ``cifar10-train.tar.gz`` (``train/<class>/NNNN.jpg``).
        dest: the archive to write (replaced atomically).
        seed: selection seed; the same source and seed give the same bytes.
        plan: images per class and part.

    Returns:
        Number of images written per part.
    """
    if not source.is_file():
        raise FileNotFoundError(f"CIFAR-10 tarball not found: {source}")
    with tarfile.open(source, "r:gz") as src:
        by_class = _source_members(src)
        chosen = sorted(
            (part, f"{part}/{cls}/{PurePosixPath(m.name).name}", m)
            for cls in CIFAR10_CLASSES
            for part, m in _assign(cls, by_class[cls], plan, seed)
        )
        tmp = dest.with_suffix(".partial")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as out,
        ):
            for _, name, member in chosen:
                payload = src.extractfile(member).read()  # type: ignore[union-attr]
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                out.addfile(info, io.BytesIO(payload))
        tmp.replace(dest)
    return Counter(part for part, _, _ in chosen)


def count_images(root: Path) -> dict[str, int]:
    """Number of files per class sub-directory of ``root``."""
    return {
        d.name: sum(1 for f in d.iterdir() if f.is_file())
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def unpack_sample(archive: Path, dest: Path) -> dict[str, dict[str, int]]:
    """Unpack the embedded sample into ``dest`` and return part -> class -> image count."""
    if not archive.is_file():
        raise FileNotFoundError(f"embedded sample not found: {archive}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return {part: count_images(dest / part) for part in SamplePlan().expected_counts()}


def sample_hashes(archive: Path, parts: tuple[str, ...] = ("seed/holdout", "incoming")) -> set[str]:
    """sha256 of the sample's images in ``parts``: what the built-in model must never see."""
    import hashlib

    hashes = set()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(tuple(p + "/" for p in parts)):
                hashes.add(hashlib.sha256(tar.extractfile(member).read()).hexdigest())  # type: ignore[union-attr]
    return hashes
