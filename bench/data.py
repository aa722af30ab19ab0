"""Benchmark of data intake on CIFAR-10 JPEGs from the shared tarball.

Measures, in one run, against baselines taken in the same run:

1. manifest (decode + hash every image) with Refit's pool vs a plain single-process PIL loop;
2. manifest + GX validation, images/s (target: >= 5,000 images/s on 2 cores);
3. `dvc add` of a 10k-image dataset directory vs copying the same directory;
4. the whole tarball (50,000 images) through intake: stage, manifest, validate, merge,
   `dvc add` + `dvc push`, with each step's share;
5. the cost of near-duplicate detection: imagehash's pHash per image (CIFAR JPEGs and
   12-megapixel photos) against the plain decode, and the Hamming search of a batch's
   hashes against a holdout's.

Run: .venv/bin/python bench/data.py [--images 10000] [--skip-full]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

from core.objectstore import Store
from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
from core.settings import get_settings
from pipelines.dataset import class_counts, load_index, merge_batch, reference_of
from pipelines.ingest import build_manifest, stage_batch
from pipelines.validate import validate_batch
from pipelines.versions import DvcStore


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def plain_pil_loop(paths: list[Path]) -> int:
    """The baseline a notebook would write: open, decode and hash each file in turn."""
    for path in paths:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    return len(paths)


def subset(source: Path, dest: Path, n: int) -> Path:
    """The first n/10 images of each class of the unpacked tarball, as class folders."""
    per_class = n // 10
    for class_dir in sorted((source / "train").iterdir()):
        target = dest / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            shutil.copyfile(path, target / path.name)
    return dest


def row(table: list, name: str, seconds: float, baseline: float, images: int) -> None:
    table.append((name, seconds, images / seconds, baseline / seconds))


def print_table(title: str, table: list) -> None:
    print(f"\n{title}")
    print(f"{'step':<44}{'seconds':>9}{'images/s':>11}{'x baseline':>12}")
    for name, seconds, rate, ratio in table:
        print(f"{name:<44}{seconds:>9.2f}{rate:>11,.0f}{ratio:>12.2f}")


def new_store(root: Path) -> DvcStore:
    repo = root / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    store = DvcStore(repo, repo / "data", str(root / "remote"), root / "cache", Store(str(root)))
    store.ensure_initialized()
    return store


def bench_subset(tarball_dir: Path, work: Path, n: int) -> None:
    limits, policy = IngestLimits(), ValidationPolicy()
    folder = subset(tarball_dir, work / "subset", n)
    paths = sorted(folder.rglob("*.jpg"))
    batch = stage_batch(folder, work / "staging", limits)
    plain_pil_loop(paths[:500])  # warm the page cache and PIL
    _, baseline = timed(plain_pil_loop, paths)
    manifest, t_manifest = timed(build_manifest, batch, limits)
    validate_batch(batch, manifest.head(50), reference_of(load_index(work / "none")), policy)
    report, t_validate = timed(
        validate_batch, batch, manifest, reference_of(load_index(work / "none")), policy
    )
    assert report.passed, report.summary()
    table: list = []
    row(table, "baseline: plain PIL loop, 1 process", baseline, baseline, len(paths))
    row(table, "refit manifest (process pool)", t_manifest, baseline, len(paths))
    row(table, "refit manifest + GX validation", t_manifest + t_validate, baseline, len(paths))
    print_table(f"Manifest and validation, {len(paths):,} CIFAR-10 JPEGs", table)

    store = new_store(work / "dvc")
    copy_target = work / "copy"
    _, t_copy = timed(shutil.copytree, folder, copy_target)
    shutil.copytree(folder, store.dataset_dir)
    _, t_add = timed(store._dvc, "add", "-q", "data")
    table = []
    row(table, "baseline: copy the directory", t_copy, t_copy, len(paths))
    row(table, "dvc add (one directory output)", t_add, t_copy, len(paths))
    print_table(f"Versioning {len(paths):,} files (target: dvc add < 10 s)", table)


def bench_near_duplicates(folder: Path, work: Path) -> None:
    import numpy as np

    from pipelines.ingest import perceptual_hash
    from pipelines.neardup import nearest

    def decode(paths):
        for path in paths:
            with Image.open(path) as image:
                image.load()

    def phash(paths):
        out = []
        for path in paths:
            with Image.open(path) as image:
                image.load()
                out.append(perceptual_hash(image))
        return out

    small = sorted(folder.rglob("*.jpg"))[:2000]
    rng = np.random.default_rng(0)
    photos = []
    gradient = Image.linear_gradient("L").resize((4000, 3000))
    for i in range(20):  # 12-megapixel photos, as phones take them (smooth, so JPEG-sized)
        bands = [gradient.rotate(int(a), expand=False) for a in rng.integers(0, 360, 3)]
        path = work / "photos" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.merge("RGB", bands).save(path, quality=85)
        photos.append(path)
    table: list = []
    for title, paths in (("CIFAR-10 JPEGs (32x32)", small), ("12 MP JPEG photos", photos)):
        _, base = timed(decode, paths)
        _, t_hash = timed(phash, paths)
        row(table, f"baseline: decode only, {title}", base, base, len(paths))
        row(table, f"decode + pHash, {title}", t_hash, base, len(paths))
    hashes = phash(small)
    holdout = [f"{int(v):016x}" for v in rng.integers(0, 2**63, 10_000, dtype=np.int64)]
    _, t_near = timed(nearest, hashes, holdout)
    row(table, "Hamming search vs 10,000 holdout hashes", t_near, t_near, len(hashes))
    print_table("Near-duplicate detection, 1 process (the manifest spreads it over cores)", table)


def bench_full(tarball: Path, work: Path) -> None:
    limits, policy, split = IngestLimits(), ValidationPolicy(), SplitPolicy()
    store = new_store(work / "full")
    steps: list[tuple[str, float]] = []
    batch, t = timed(stage_batch, tarball, work / "staging-full", limits)
    steps.append(("stage (unpack tar.gz safely)", t))
    manifest, t = timed(build_manifest, batch, limits)
    steps.append(("manifest", t))
    report, t = timed(validate_batch, batch, manifest, reference_of(load_index(work / "x")), policy)
    steps.append(("validate (GX + image checks)", t))
    pending, t = timed(merge_batch, store.dataset_dir, batch, manifest, report, split)
    steps.append(("merge (atomic)", t))
    counts = class_counts(load_index(store.dataset_dir))
    _, t = timed(store.add_version, batch.batch_id, counts)
    pending.commit()
    steps.append(("dvc add + push", t))
    total = sum(t for _, t in steps)
    print(
        f"\nWhole tarball through intake: {len(manifest):,} images in {total:.1f} s "
        f"({len(manifest) / total:,.0f} images/s)"
    )
    print(f"{'step':<32}{'seconds':>9}{'share':>8}")
    for name, seconds in steps:
        print(f"{name:<32}{seconds:>9.2f}{seconds / total:>8.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--skip-full", action="store_true", help="skip the 50k end-to-end run")
    args = parser.parse_args()
    tarball = get_settings().cifar10_archive
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        work = Path(tmp)
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(work)], check=True)
        bench_subset(work, work / "subset-run", args.images)
        bench_near_duplicates(work / "subset-run" / "subset", work / "near-duplicates")
        if not args.skip_full:
            bench_full(tarball, work / "full-run")


if __name__ == "__main__":
    main()
