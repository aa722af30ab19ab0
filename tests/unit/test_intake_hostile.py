"""Hostile and odd batches: each refused with a clear error naming the file and the rule,
or accepted after conversion; never a crash, and a refused batch leaves nothing behind.

Real files, real Great Expectations; no DVC (see tests/e2e/test_data_versions.py)."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.policies import IngestLimits, ValidationPolicy
from pipelines.data.ingest import BatchRefused, build_manifest, stage_batch
from pipelines.data.validate import Reference, ValidationReport, validate_batch
from pipelines.images.decode import load_rgb
from tests.conftest import write_class_folders, write_image

LIMITS = IngestLimits(max_total_mb=40, max_files=500)
POLICY = ValidationPolicy(min_images_per_class=2, min_images_per_new_class=3)
EXISTING = Reference(
    train_classes=frozenset({"cat", "dog"}), holdout_classes=frozenset({"cat", "dog"})
)


def check(
    source: Path, staging: Path, reference: Reference = EXISTING, policy: ValidationPolicy = POLICY
) -> ValidationReport:
    batch = stage_batch(source, staging, LIMITS)
    return validate_batch(batch, build_manifest(batch, LIMITS), reference, policy)


def failed(report: ValidationReport) -> dict[str, list[str]]:
    return {r.rule: r.examples for r in report.failed_rules}


def repaired(report: ValidationReport) -> dict[str, list[str]]:
    """Repair rules that skipped files, with their examples (the batch still passes)."""
    assert report.passed, report.summary()
    return {r.rule: r.examples for r in report.repairs}


def refused(source: Path, staging: Path) -> BatchRefused:
    with pytest.raises(BatchRefused) as info:
        stage_batch(source, staging, LIMITS)
    assert list(staging.iterdir()) == [] if staging.exists() else True  # nothing left behind
    return info.value


def zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def png_bytes(seed: int, size: tuple[int, int] = (24, 24)) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def good_members(n: int = 3) -> dict[str, bytes]:
    return {f"cat/{i}.png": png_bytes(i) for i in range(n)}


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


# --- archives refused as a whole -----------------------------------------------------------


def test_zip_slip_is_refused(tmp_path: Path, staging: Path) -> None:
    source = zip_with(tmp_path / "slip.zip", {**good_members(), "../evil.png": png_bytes(9)})
    error = refused(source, staging)
    assert error.rule == "zip_slip" and "../evil.png" in str(error) and "slip.zip" in str(error)
    assert not (tmp_path / "evil.png").exists()


def test_absolute_path_in_zip_is_refused(tmp_path: Path, staging: Path) -> None:
    source = zip_with(tmp_path / "abs.zip", {"/tmp/evil.png": png_bytes(1)})
    assert refused(source, staging).rule == "zip_slip"


def test_symlink_in_zip_is_refused(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "link.zip"
    with zipfile.ZipFile(source, "w") as archive:
        link = zipfile.ZipInfo("cat/passwd.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    error = refused(source, staging)
    assert error.rule == "link" and "cat/passwd.png" in str(error)


def test_symlink_in_tar_is_refused(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "link.tar.gz"
    with tarfile.open(source, "w:gz") as archive:
        info = tarfile.TarInfo("cat/passwd.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    assert refused(source, staging).rule == "link"


def test_symlink_in_folder_is_refused(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 3})
    (folder / "cat" / "sneaky.png").symlink_to("/etc/passwd")
    assert refused(folder, staging).rule == "link"


def test_zip_bomb_is_refused_before_extraction(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "bomb.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cat/0.png", b"\0" * (LIMITS.max_total_mb + 1 << 20))
    assert source.stat().st_size < 100_000  # tiny on disk, large when unpacked
    error = refused(source, staging)
    assert error.rule == "too_large" and "ingest.max_total_mb" in str(error)


def test_too_many_files_are_refused(tmp_path: Path, staging: Path) -> None:
    members = {f"cat/{i}.png": b"x" for i in range(LIMITS.max_files + 1)}
    error = refused(zip_with(tmp_path / "many.zip", members), staging)
    assert error.rule == "too_many_files" and "ingest.max_files" in str(error)
    assert "holds" in str(error)  # refused from its headers, before extracting a file


@pytest.mark.parametrize("kind", ["tar.gz", "tar"])
def test_a_tar_is_refused_from_its_headers_before_extraction(
    tmp_path: Path, staging: Path, kind: str
) -> None:
    source = tmp_path / f"many.{kind}"
    with tarfile.open(source, "w:gz" if kind == "tar.gz" else "w") as archive:
        for i in range(LIMITS.max_files + 1):
            info = tarfile.TarInfo(f"cat/{i}.png")
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    error = refused(source, staging)
    assert error.rule == "too_many_files" and "holds" in str(error)
    assert not [p for p in staging.rglob("*") if p.is_file()]


def test_random_bytes_named_zip_are_refused(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "random.zip"
    source.write_bytes(os.urandom(4096))
    error = refused(source, staging)
    assert error.rule == "corrupt_archive" and "random.zip" in str(error)


def test_zip_holding_only_a_zip_is_refused(tmp_path: Path, staging: Path) -> None:
    inner = zip_with(tmp_path / "inner.zip", good_members())
    source = zip_with(tmp_path / "outer.zip", {"inner.zip": inner.read_bytes()})
    error = refused(source, staging)
    assert error.rule == "nested_archive" and "inner.zip" in str(error)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_empty_batch_is_refused(tmp_path: Path, staging: Path, kind: str) -> None:
    if kind == "folder":
        source = tmp_path / "empty"
        source.mkdir()
    else:
        source = zip_with(tmp_path / "empty.zip", {})
    assert refused(source, staging).rule == "empty_batch"


def test_unknown_format_is_refused(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "batch.rar"
    source.write_bytes(b"Rar!")
    assert refused(source, staging).rule == "unsupported_format"


# --- benign defects: the files are skipped and reported, the batch goes on ----------------


def test_non_image_files_are_skipped(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 6})
    (folder / "cat" / "notes.txt").write_text("hello")
    report = check(folder, staging)
    assert repaired(report) == {"not_an_image": ["cat/notes.txt (extension is not an image type)"]}
    assert report.skipped == [
        {
            "path": "cat/notes.txt",
            "rule": "not_an_image",
            "detail": "extension is not an image type",
        }
    ]
    assert report.class_counts == {"cat": 6}


def test_corrupt_images_are_skipped_with_reasons(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 12})
    jpeg = write_image(folder / "cat" / "whole.jpg", seed=50).read_bytes()
    (folder / "cat" / "whole.jpg").unlink()
    (folder / "cat" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = png_bytes(51)
    (folder / "cat" / "corrupt.png").write_bytes(png[:40] + b"\xff" * 40 + png[80:])
    (folder / "cat" / "text.jpg").write_text("this is not a JPEG")
    report = check(folder, staging)
    examples = repaired(report)["decodable"]
    assert len(examples) == 3 and report.class_counts == {"cat": 12}
    assert {e.split(" ")[0] for e in examples} == {
        "cat/truncated.jpg",
        "cat/corrupt.png",
        "cat/text.jpg",
    }
    assert all("cannot decode" in e for e in examples)


def test_one_pixel_images_are_skipped(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 6})
    write_image(folder / "cat" / "dot.png", seed=60, size=(1, 1))
    examples = repaired(check(folder, staging))["size_within_bounds"]
    assert examples[0].startswith("cat/dot.png")


def gigapixel_png(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (the decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_image_is_skipped(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 6})
    (folder / "cat" / "bomb.png").write_bytes(gigapixel_png(100_000, 100_000))
    examples = repaired(check(folder, staging))["decodable"]
    assert examples[0].startswith("cat/bomb.png") and "decompression bomb" in examples[0]


def test_labels_csv_naming_missing_files_skips_them(tmp_path: Path, staging: Path) -> None:
    rows = "".join(f"cat/{i}.png,cat\n" for i in range(6))
    members = {**good_members(6), "labels.csv": f"filename,label\n{rows}ghost.png,cat\n".encode()}
    report = check(zip_with(tmp_path / "csv.zip", members), staging)
    assert repaired(report) == {"missing_file": ["ghost.png (named in labels.csv line 8)"]}


def test_more_skipped_than_the_share_refuses_the_batch(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 6})
    for i in range(3):
        (folder / "cat" / f"notes{i}.txt").write_text("x")
    report = check(folder, staging)  # 3 of 9 files: 33% > 20%
    assert failed(report) == {"max_skipped_share": ["3 of 9 files (33%) would be skipped"]}
    lenient = POLICY.model_copy(update={"max_skipped_share": 0.5})
    assert check(folder, staging, policy=lenient).passed


FULL_WIDTH_CAT = "\uff43\uff41\uff54"


@pytest.mark.parametrize("variant", ["Cat ", "CAT", FULL_WIDTH_CAT])
def test_label_variants_of_existing_classes_fail(
    tmp_path: Path, staging: Path, variant: str
) -> None:
    rows = "".join(f"{i}.png,{variant}\n" for i in range(3))
    members = {f"{i}.png": png_bytes(i) for i in range(3)}
    members["labels.csv"] = ("filename,label\n" + rows).encode()
    report = check(zip_with(tmp_path / "variant.zip", members), staging)
    assert repr("cat") in " ".join(failed(report)["class_name_variant"])
    # labels are read stripped (spreadsheets pad cells); the variant is still caught
    assert repr(variant.strip()) in " ".join(failed(report)["class_name_variant"])


def test_same_image_twice_keeps_one(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 6})
    (folder / "cat" / "copy.png").write_bytes((folder / "cat" / "0000.png").read_bytes())
    report = check(folder, staging)
    assert repaired(report) == {"unique_in_batch": ["cat/copy.png (same image as cat/0000.png)"]}
    assert report.class_counts == {"cat": 6}


def test_same_image_under_two_labels_is_skipped_entirely(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 6, "dog": 6})
    (folder / "dog" / "which.png").write_bytes((folder / "cat" / "0000.png").read_bytes())
    report = check(folder, staging, policy=POLICY.model_copy(update={"max_skipped_share": 0.5}))
    assert {e.split(" ")[0] for e in repaired(report)["conflicting_labels"]} == {
        "cat/0000.png",
        "dog/which.png",
    }


def test_new_class_with_too_few_images_fails(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 3, "truck": 2})
    report = check(folder, staging)
    assert report.new_classes == ["truck"]
    assert failed(report) == {"min_images_per_new_class": ["truck (new_class_images=2)"]}


def test_new_classes_can_be_forbidden(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 3, "truck": 3})
    report = check(folder, staging, policy=POLICY.model_copy(update={"allow_new_classes": False}))
    assert "known_or_allowed_label" in failed(report)


def test_class_imbalance_fails(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 2, "dog": 9})
    policy = POLICY.model_copy(update={"max_class_imbalance": 4})
    assert "class_balance" in failed(check(folder, staging, policy=policy))


def test_balance_and_minimums_judge_the_dataset_after_the_merge(
    tmp_path: Path, staging: Path
) -> None:
    """A batch of known classes collected from production is uneven; the dataset is not."""
    folder = write_class_folders(tmp_path / "batch", {"cat": 1, "dog": 12})
    dataset = Reference(
        frozenset({"cat", "dog"}),
        frozenset({"cat", "dog"}),
        train_counts=(("cat", 400), ("dog", 380)),
    )
    strict = POLICY.model_copy(update={"max_class_imbalance": 4, "min_images_per_class": 5})
    assert check(folder, staging, reference=dataset, policy=strict).passed
    # a new class still needs its own minimum in the batch
    write_class_folders(folder, {"truck": 2}, seed=7)
    report = check(folder, staging, reference=dataset, policy=strict)
    assert "min_images_per_new_class" in failed(report)


def test_leakage_and_training_duplicates_fail(tmp_path: Path, staging: Path) -> None:
    import hashlib

    folder = write_class_folders(tmp_path / "batch", {"cat": 6})
    digest = [
        hashlib.sha256((folder / "cat" / f"{i:04d}.png").read_bytes()).hexdigest() for i in range(2)
    ]
    reference = Reference(
        frozenset({"cat"}),
        frozenset({"cat"}),
        train_sha256=frozenset({digest[0]}),
        holdout_sha256=frozenset({digest[1]}),
    )
    report = check(folder, staging, reference=reference)
    assert failed(report) == {"holdout_leakage": ["cat/0001.png"]}
    assert "cat/0000.png (already in the training set)" in report.repairs[0].examples


# --- odd but legitimate images are accepted -------------------------------------------------


def test_odd_but_legitimate_images_are_accepted(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 3, "café": 3})
    odd = folder / "cat"
    write_image(odd / "cmyk.jpg", 70, mode="CMYK")
    write_image(odd / "gray8.png", 71, mode="L")
    gray16 = np.random.default_rng(72).integers(0, 65535, (24, 24), dtype=np.uint16)
    Image.fromarray(gray16).save(odd / "gray16.png")
    assert Image.open(odd / "gray16.png").mode.startswith("I;16")
    write_image(odd / "rgba.png", 73, mode="RGBA")
    write_image(odd / "photo.webp", 74)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    write_image(odd / "rotated.jpg", 75, size=(32, 24), exif=exif)
    write_image(odd / "big-photo.jpg", 76, size=(4000, 3000))  # 12 megapixels
    write_image(folder / "café" / "ünïcödé.png", 77)
    report = check(folder, staging)
    assert report.passed, report.summary()
    assert report.class_counts == {"cat": 10, "café": 4}
    # Each converts to the RGB image the model will see; the EXIF rotation is applied.
    for path in (folder / "cat").iterdir():
        assert load_rgb(path).mode == "RGB"
    assert load_rgb(odd / "rotated.jpg").size == (24, 32)


def test_report_renders_as_text_html_and_json(tmp_path: Path, staging: Path) -> None:
    folder = write_class_folders(tmp_path / "batch", {"cat": 3})
    (folder / "cat" / "notes.txt").write_text("x")
    (folder / "cat" / "0000.png").write_bytes(b"broken")
    report = check(folder, staging, policy=POLICY.model_copy(update={"max_skipped_share": 0.6}))
    report.write(tmp_path / "report")
    assert "~ not_an_image: 1 skipped" in (tmp_path / "report" / "report.txt").read_text()
    page = (tmp_path / "report/report.html").read_text()
    assert "<tr class=warn><td>~</td><td><code>not_an_image</code></td>" in page
    assert '"passed": true' in (tmp_path / "report" / "report.json").read_text()
