"""Benchmark of data intake on CIFAR-10 JPEGs from the shared tarball.

Measures, in one run, against baselines taken in the same run:

1. manifest (decode + hash every image) with Refit's pool vs a plain single-process PIL loop;
2. manifest + GX validation, images/s (target: >= 5,000 images/s on 2 cores);
3. `dvc add` of a 10k-image dataset directory vs copying the same directory;
4. the whole tarball (50,000 images) through intake: stage, manifest, validate, merge,
   `dvc add` + `dvc push`, with each step's share;
5. the cost of near-duplicate detection: imagehash's pHash per image (CIFAR JPEGs and
   12-megapixel photos) against the plain decode, and the Hamming search of a batch's
   hashes against a holdout's;
6. suspicious labels: cleanlab through the intake check on batches with 5% and 10% of
   their labels flipped (precision and recall of the disputed images).

Run: .venv/bin/python bench/data.py [--images 10000] [--skip-full] [--label-issues]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from core.objectstore import Store
from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
from core.settings import get_settings
from pipelines.data.dataset import class_counts, load_index, merge_batch, reference_of
from pipelines.data.ingest import build_manifest, stage_batch
from pipelines.data.validate import validate_batch
from pipelines.data.versions import DvcStore


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

    from pipelines.data.ingest import perceptual_hash
    from pipelines.data.neardup import nearest

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


def bench_label_issues(work: Path) -> None:
    """cleanlab through the real intake check: the built-in 9-class champion examines batches
    of the embedded sample's holdout images (it never trained on them) with a known share of
    labels flipped; precision and recall of the disputed images against the flips."""
    import numpy as np

    from pipelines.data.examine import ChampionView
    from pipelines.data.intake import Intake, IntakePaths, check_batch, discard
    from pipelines.data.sample import unpack_sample
    from pipelines.images.decode import load_images
    from pipelines.loop.features import TrainingFeatures, features_and_probs
    from pipelines.models.modelfile import load_refit_model

    settings = get_settings()
    sample = work / "sample"
    unpack_sample(settings.sample_archive, sample)
    loaded = load_refit_model(settings.builtin_model)
    classes = loaded.class_names
    train = [
        p for c in classes for p in sorted((sample / "seed" / "train" / c).glob("*.jpg"))[:120]
    ]
    images = load_images(train, [p.parent.name for p in train], classes, loaded.input_size)
    probs, feats = features_and_probs(loaded.model, images.x)
    view = ChampionView(loaded, "builtin", TrainingFeatures(feats, images.y, probs, classes))
    holdout = [
        (p, p.parent.name)
        for c in classes
        for p in sorted((sample / "seed" / "holdout" / c).glob("*.jpg"))
    ]
    print("\nSuspicious labels (cleanlab via the intake check; built-in champion, holdout images)")
    print("| batch | images | flipped | disputed | precision | recall | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for name, keep, share in (
        ("9 classes", classes, 0.05),
        ("9 classes", classes, 0.10),
        ("2 classes (cat, dog)", ["cat", "dog"], 0.10),
    ):
        rows = [(p, c) for p, c in holdout if c in keep]
        flipped = set(rng.choice(len(rows), round(share * len(rows)), replace=False).tolist())
        batch = work / f"flipped-{len(keep)}-{share}"
        for i, (path, label) in enumerate(rows):
            if i in flipped:
                label = classes[
                    (classes.index(label) + int(rng.integers(1, len(classes)))) % len(classes)
                ]
            (batch / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, batch / label / f"{i:05d}.jpg")
        paths = IntakePaths(work / "st", work / "q", work / "acc", work / "lock")
        started = time.perf_counter()
        policy = ValidationPolicy(  # no dataset yet: any class count will do
            min_images_per_class=1, min_images_per_new_class=1, max_class_imbalance=1000
        )
        checked = check_batch(
            batch, work / "no-dataset", Intake(paths, IngestLimits(), policy),
            progress=lambda m: None, view=view,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        discard(checked)
        found = {int(Path(x["path"]).stem) for x in checked.report.label_issues}
        hits = len(found & flipped)
        precision = hits / len(found) if found else float("nan")
        print(f"| {name} | {len(rows)} | {len(flipped)} ({share:.0%}) | {len(found)} | "
              f"{precision:.2f} | {hits / len(flipped):.2f} | {seconds:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--skip-full", action="store_true", help="skip the 50k end-to-end run")
    parser.add_argument("--label-issues", action="store_true", help="only the cleanlab part")
    args = parser.parse_args()
    if args.label_issues:
        with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
            bench_label_issues(Path(tmp))
        return
    tarball = get_settings().cifar10_archive
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        work = Path(tmp)
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(work)], check=True)
        bench_subset(work, work / "subset-run", args.images)
        bench_near_duplicates(work / "subset-run" / "subset", work / "near-duplicates")
        bench_label_issues(work / "label-issues")
        if not args.skip_full:
            bench_full(tarball, work / "full-run")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("data"):
        main()
