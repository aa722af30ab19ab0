"""Datasets as people have them: messy photo folders, spreadsheet CSVs, numeric labels,
near-duplicates of the holdout. Real files, real Great Expectations, real imagehash."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
from pipelines.data.dataset import assign_splits, empty_index
from pipelines.data.ingest import build_manifest, stage_batch
from pipelines.data.validate import Reference, validate_batch
from pipelines.images.names import natural_sorted
from tests.conftest import write_image
from tests.userfiles import messy_photo_set

LIMITS = IngestLimits()
POLICY = ValidationPolicy(min_images_per_class=2, min_images_per_new_class=3)


EMPTY = Reference()


def check(source: Path, staging: Path, reference=EMPTY, policy=POLICY):
    batch = stage_batch(source, staging, LIMITS)
    manifest = build_manifest(batch, LIMITS)
    return validate_batch(batch, manifest, reference, policy), manifest


def test_a_messy_photo_folder_is_accepted_with_its_duplicates_repaired(tmp_path: Path) -> None:
    made = messy_photo_set(tmp_path / "vehicles")
    report, manifest = check(tmp_path / "vehicles", tmp_path / "staging")
    assert report.passed, report.summary()
    assert {r.rule: r.failed_count for r in report.repairs} == {"unique_in_batch": 4}
    assert sum(report.class_counts.values()) == made["files"] - made["duplicates"]
    assert set(manifest["mode"]) >= {"RGB", "RGBA", "P"}
    assert {Path(p).suffix for p in manifest["path"]} == {".jpg", ".JPG", ".jpeg", ".png"}
    assert manifest["width"].max() == 3000


def spreadsheet_csv(folder: Path, rows: list[tuple[str, str]], sep: str = ";") -> Path:
    """A CSV as Excel writes it on a European locale: BOM, ';', quoted cells, CRLF."""
    lines = [f'"filename"{sep}"label"'] + [f'"{p}"{sep}"{label}"' for p, label in rows]
    path = folder / "labels.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    return path


def test_a_spreadsheet_csv_with_windows_paths_and_numeric_labels(tmp_path: Path) -> None:
    folder = tmp_path / "signs"
    rows = []
    for label in ("2", "7", "10"):
        for i in range(4):
            write_image(folder / "images" / f"{label}_{i}.png", seed=int(label) * 10 + i)
            rows.append((f"images\\{label}_{i}.png", label))
    for i in range(3):
        write_image(folder / "images" / f"speed_{i}.png", seed=500 + i)
        rows.append((f"images\\speed_{i}.png", "speed limit (30), urban"))
    csv = spreadsheet_csv(folder, rows)
    report, manifest = check(csv, tmp_path / "staging")
    assert report.passed, report.summary()
    assert report.class_counts == {"2": 4, "7": 4, "10": 4, "speed limit (30), urban": 3}
    assert all(isinstance(v, str) for v in manifest["label"])  # "7", never 7 or 7.0
    assert report.new_classes == ["2", "7", "10", "speed limit (30), urban"]


def test_csv_paths_that_do_not_resolve_name_the_row_and_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    rows = []
    for i in range(4):
        write_image(folder / "Train" / "images" / f"{i}.png", seed=i)
        rows.append((f"images/{i}.png", "14"))  # relative to Train/, not to the CSV
    csv = spreadsheet_csv(folder, rows, sep=",")
    report, _ = check(csv, tmp_path / "staging")
    assert not report.passed
    text = report.summary()
    assert "images/0.png (named in labels.csv line 2; it is in Train/" in text
    assert "max_skipped_share" in text and "Traceback" not in text


def test_natural_order_of_class_names() -> None:
    assert natural_sorted(["10", "2", "1", "class 10", "class 9", "B", "a"]) == [
        "1", "2", "10", "a", "B", "class 9", "class 10",
    ]  # fmt: skip


def resaved(path: Path, out: Path, scale: float, quality: int) -> Path:
    with Image.open(path) as image:
        w, h = image.size
        small = image.convert("RGB").resize((int(w * scale), int(h * scale)))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    return out


def photo(path: Path, seed: int, size=(160, 120)) -> Path:
    """A smooth photo-like image (pHash looks at low frequencies; noise has none)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / size[0]
    channels = [
        np.sin(x * rng.uniform(2, 9) + y * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)
    ]
    pixels = ((np.stack(channels, axis=-1) + 1) * 127.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("mode", ["skip", "refuse"])
def test_a_resized_resave_of_a_holdout_image_is_leakage(tmp_path: Path, mode: str) -> None:
    from pipelines.data.ingest import perceptual_hash

    held = photo(tmp_path / "holdout.png", seed=1)
    with Image.open(held) as image:
        image.load()
        reference = Reference(
            frozenset({"car"}), frozenset({"car"}), train_counts=(("car", 40),),
            holdout_phash=(perceptual_hash(image),),
        )  # fmt: skip
    batch = tmp_path / "batch"
    for i in range(8):
        photo(batch / "car" / f"{i}.png", seed=100 + i)
    resaved(held, batch / "car" / "IMG_resized.jpg", 0.6, 70)
    policy = POLICY.model_copy(update={"near_duplicate_leakage": mode})
    report, _ = check(batch, tmp_path / "staging", reference, policy)
    if mode == "skip":
        assert report.passed
        [rule] = report.repairs
        assert rule.rule == "near_duplicate_of_holdout" and rule.failed_count == 1
        assert (
            "car/IMG_resized.jpg" in rule.examples[0] and "bits from a holdout" in rule.examples[0]
        )
    else:
        assert [r.rule for r in report.failed_rules] == ["near_duplicate_of_holdout"]


def test_near_duplicates_of_one_merge_stay_on_one_side_of_the_split(tmp_path: Path) -> None:
    from pipelines.data.ingest import perceptual_hash

    rows = []
    for i in range(10):  # ten photos, each with two re-saves: 30 images, 10 groups
        original = photo(tmp_path / f"{i}.png", seed=i)
        for k, path in enumerate(
            [original, resaved(original, tmp_path / f"{i}a.jpg", 0.8, 80),
             resaved(original, tmp_path / f"{i}b.jpg", 0.5, 60)]
        ):  # fmt: skip
            with Image.open(path) as image:
                image.load()
                rows.append({"path": path.name, "label": "new", "split": None,
                             "sha256": f"{i:02d}{k}", "phash": perceptual_hash(image)})  # fmt: skip
    manifest = pd.DataFrame(rows)
    splits = assign_splits(manifest, empty_index(), SplitPolicy(holdout_share=0.2), near_distance=8)
    sides = manifest.assign(split=splits, group=[p.rstrip("ab.jpng") for p in manifest["path"]])
    assert sides.groupby("group")["split"].nunique().max() == 1  # never both sides
    assert (splits == "holdout").sum() == 6  # two whole groups: 20% of 30
    ignored = assign_splits(manifest, empty_index(), SplitPolicy(holdout_share=0.2))
    assert sides.assign(split=ignored).groupby("group")["split"].nunique().max() == 2


def test_dataset_phashes_are_cached_by_sha256(tmp_path: Path) -> None:
    from pipelines.data.neardup import dataset_phashes

    photo(tmp_path / "data" / "a.png", seed=3)
    rows = pd.DataFrame({"path": ["a.png"], "sha256": ["abc"]})
    cache = tmp_path / "phash-cache.csv"
    first = dataset_phashes(tmp_path / "data", rows, cache)
    (tmp_path / "data" / "a.png").unlink()  # a second call must not need the file
    assert dataset_phashes(tmp_path / "data", rows, cache) == first and len(first[0]) == 16


def test_a_merge_leaves_skipped_files_out_and_records_why(tmp_path: Path) -> None:
    from pipelines.data.dataset import SKIPPED_FILE, load_index, merge_batch

    folder = tmp_path / "batch"
    for i in range(8):
        photo(folder / "car" / f"{i}.png", seed=i)
    (folder / "car" / "copy.png").write_bytes((folder / "car" / "0.png").read_bytes())
    (folder / "car" / "notes.txt").write_text("x")
    batch = stage_batch(folder, tmp_path / "staging", LIMITS)
    manifest = build_manifest(batch, LIMITS)
    report = validate_batch(batch, manifest, EMPTY, POLICY)
    assert report.passed, report.summary()
    pending = merge_batch(tmp_path / "data", batch, manifest, report, SplitPolicy())
    pending.commit()
    index = load_index(tmp_path / "data")
    assert len(index) == 8 and "car/copy.png" not in set(index["source_path"])
    skipped = pd.read_csv(tmp_path / "data" / SKIPPED_FILE)
    assert sorted(zip(skipped["path"], skipped["rule"], strict=True)) == [
        ("car/copy.png", "unique_in_batch"),
        ("car/notes.txt", "not_an_image"),
    ]
    assert set(skipped["batch_id"]) == {batch.batch_id}
