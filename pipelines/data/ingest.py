"""Ingest: unpack an uploaded batch safely into staging, and describe every file in a manifest.

A batch comes as a zip, tar or tar.gz archive, a folder, or a CSV of image paths and labels
next to the files. Inside an archive or folder, labels come from class sub-folders
(``<class>/<file>``), from a ``labels.csv`` (``filename,label``), or from Refit's own
dataset layout (``train/<class>/...`` and ``holdout/<class>/...``, which keeps the split).

Anything that could escape or exhaust the staging area is refused before it is written:
absolute or ``..`` paths (zip slip), links and special files, more files or bytes than the
limits, archives that are not what their name says, and archives that only hold another
archive. Such a refusal raises :class:`BatchRefused`, naming the file and the rule. Problems
of single files (not an image, named in labels.csv but missing, outside any class folder)
are recorded as :class:`Finding` s for validation to report.

The manifest decodes every image once (in a process pool for large batches) and records
path, label, split, size, mode, format, bytes, sha256, a perceptual hash (``imagehash``'s
64-bit pHash, for near-duplicates) and whether it decodes (and why not).

Labels CSVs come as spreadsheets export them: a BOM, ``,`` ``;`` or tab separated, quoted
names, Windows paths (``images\\x.png``); labels stay text (``7``, never ``7.0``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import secrets
import shutil
import socket
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pandas as pd
from PIL import Image

from core.policies import IngestLimits
from pipelines.images.decode import plain_signals

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LABELS_CSV = "labels.csv"
STAGING_OWNER = ".owner"  # host:pid of the intake that stages a batch (a sibling of files/)
SPLITS = ("train", "holdout")
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})
MANIFEST_COLUMNS = [
    "path",
    "label",
    "split",
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "sha256",
    "decodable",
    "reason",
    "phash",
]
COPY_CHUNK = 1 << 20
NOT_AN_IMAGE = "extension is not an image type"
POOL_THRESHOLD = 2_000  # below this, decoding in-process beats starting a pool


class BatchRefused(Exception):
    """The batch as a whole is refused; nothing of it was kept."""

    def __init__(self, rule: str, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message} [rule: {rule}]")
        self.rule, self.path, self.message = rule, str(path), message


@dataclass(frozen=True)
class Finding:
    """A problem with one file of the batch, reported by validation."""

    rule: str
    path: str
    detail: str


@dataclass(frozen=True)
class BatchFile:
    """An image file of a staged batch: its path under ``files/``, label and requested split."""

    path: str
    label: str
    split: str | None = None


@dataclass
class StagedBatch:
    """A batch unpacked into ``<staging>/<batch_id>/files/``, with each image's label."""

    batch_id: str
    source: Path
    root: Path
    files: list[BatchFile]
    findings: list[Finding] = field(default_factory=list)

    @property
    def files_dir(self) -> Path:
        return self.root / "files"


def new_batch_id() -> str:
    """A sortable, unique, readable batch id, e.g. ``batch-20261123-141502-3fa9``."""
    return f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------- unpacking


def _safe_relpath(name: str, source: Path) -> PurePosixPath | None:
    """The member name as a relative path inside the batch; refuses anything that escapes."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise BatchRefused("zip_slip", source, f"member {name!r} has an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BatchRefused("zip_slip", source, f"member {name!r} points outside the batch (..)")
    return PurePosixPath(*parts) if parts else None


class _Budget:
    """Counts files and bytes written, refusing the batch when a limit is passed."""

    def __init__(self, limits: IngestLimits, source: Path) -> None:
        self.limits, self.source = limits, source
        self.files = 0
        self.bytes = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise BatchRefused(
                "too_many_files",
                self.source,
                f"more than {self.limits.max_files} files (ingest.max_files); at {name!r}",
            )

    def add_bytes(self, name: str, file_bytes: int, n: int) -> None:
        self.bytes += n
        if file_bytes > self.limits.max_file_mb << 20:
            raise BatchRefused(
                "file_too_large",
                self.source,
                f"{name!r} is larger than {self.limits.max_file_mb} MB (ingest.max_file_mb)",
            )
        if self.bytes > self.limits.max_total_mb << 20:
            raise BatchRefused(
                "too_large",
                self.source,
                f"uncompressed size exceeds {self.limits.max_total_mb} MB (ingest.max_total_mb)"
                " - a zip bomb?",
            )


def _copy_stream(src: BinaryIO, dest: Path, name: str, budget: _Budget) -> None:
    """Copy with the byte budget enforced on what is actually read, not what is declared."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            budget.add_bytes(name, written, len(chunk))
            out.write(chunk)


def _is_symlink_member(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(source: Path, dest: Path, limits: IngestLimits) -> None:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BatchRefused("corrupt_archive", source, f"not a readable zip ({exc})") from exc
    budget = _Budget(limits, source)
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        _check_declared(source, limits, len(infos))
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_total_mb << 20:
            raise BatchRefused(
                "too_large",
                source,
                f"declares {declared >> 20} MB uncompressed, more than {limits.max_total_mb} MB"
                " (ingest.max_total_mb) - a zip bomb?",
            )
        for info in infos:
            rel = _safe_relpath(info.filename, source)
            if _is_symlink_member(info):
                raise BatchRefused("link", source, f"member {info.filename!r} is a symlink")
            if rel is None:
                continue
            budget.add_file(info.filename)
            try:
                with archive.open(info) as member:
                    _copy_stream(member, dest / rel, info.filename, budget)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise BatchRefused(
                    "corrupt_archive", source, f"member {info.filename!r} is damaged ({exc})"
                ) from exc


def _check_declared(source: Path, limits: IngestLimits, files: int, size: int = 0) -> None:
    """Refuse an archive by what its headers declare, before anything is extracted."""
    if files > limits.max_files:
        raise BatchRefused(
            "too_many_files",
            source,
            f"holds {files} files, more than {limits.max_files} (ingest.max_files)",
        )
    if size > limits.max_total_mb << 20:
        raise BatchRefused(
            "too_large",
            source,
            f"declares {size >> 20} MB uncompressed, more than {limits.max_total_mb} MB"
            " (ingest.max_total_mb)",
        )


def _scan_tar(source: Path, limits: IngestLimits) -> None:
    """A first pass over the tar headers only (nothing written): counts and sizes."""
    files = size = 0
    with tarfile.open(source, mode="r|*") as archive:
        for member in archive:
            if member.isfile():
                files, size = files + 1, size + member.size
                _check_declared(source, limits, files, size)


def _extract_tar(source: Path, dest: Path, limits: IngestLimits) -> None:
    budget = _Budget(limits, source)
    try:
        _scan_tar(source, limits)
        # Stream mode reads members in order, so a huge archive is refused early.
        with tarfile.open(source, mode="r|*") as archive:
            for member in archive:
                rel = _safe_relpath(member.name, source)
                if member.issym() or member.islnk():
                    raise BatchRefused("link", source, f"member {member.name!r} is a link")
                if not (member.isfile() or member.isdir()):
                    raise BatchRefused(
                        "special_file", source, f"member {member.name!r} is not a regular file"
                    )
                if member.isdir() or rel is None:
                    continue
                budget.add_file(member.name)
                budget.add_bytes(member.name, member.size, 0)
                stream = archive.extractfile(member)
                assert stream is not None
                _copy_stream(stream, dest / rel, member.name, budget)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BatchRefused("corrupt_archive", source, f"not a readable tar ({exc})") from exc


def _copy_folder(source: Path, dest: Path, limits: IngestLimits) -> None:
    budget = _Budget(limits, source)
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                raise BatchRefused("link", path, "symlinks are not accepted in a batch")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(source)
            if not path.is_file():
                raise BatchRefused("special_file", path, "not a regular file")
            budget.add_file(str(rel))
            with open(path, "rb") as src:
                _copy_stream(src, dest / rel, str(rel), budget)


def _read_labels_csv(csv_path: Path) -> Iterator[tuple[int, str, str]]:
    """Rows of a labels CSV as (line number, file, label); columns filename|path and label.
    The separator (``,``, ``;`` or tab) is sniffed; backslashes in paths become ``/``."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            head = handle.readline()
            handle.seek(0)
            delimiter = max(",;\t", key=head.count)
            reader = csv.DictReader(handle, delimiter=delimiter)
            fields = {f.strip().lower(): f for f in reader.fieldnames or []}
            file_col = fields.get("filename") or fields.get("path") or fields.get("file")
            label_col = fields.get("label") or fields.get("class")
            if not file_col or not label_col:
                raise BatchRefused(
                    "labels_csv",
                    csv_path,
                    "needs columns 'filename' (or 'path') and 'label' (or 'class'), has "
                    f"{reader.fieldnames}",
                )
            for line, row in enumerate(reader, start=2):
                name = (row.get(file_col) or "").strip().replace("\\", "/")
                yield line, name, (row.get(label_col) or "").strip()
    except UnicodeDecodeError as exc:
        raise BatchRefused("labels_csv", csv_path, f"is not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise BatchRefused("labels_csv", csv_path, f"is not valid CSV ({exc})") from exc


def _deeper(base: Path, rel: PurePosixPath) -> str | None:
    """The sub-folder of ``base`` where ``rel`` exists instead, if exactly one has it."""
    try:
        hits = [d.name for d in base.iterdir() if d.is_dir() and (d / rel).is_file()]
    except OSError:
        return None
    return hits[0] if len(hits) == 1 else None


def _copy_csv_batch(csv_path: Path, dest: Path, limits: IngestLimits) -> None:
    """Copy the files a CSV names (relative to its folder) and the CSV itself as labels.csv."""
    base = csv_path.parent.resolve()
    budget = _Budget(limits, csv_path)
    for _, name, _ in _read_labels_csv(csv_path):
        rel = _safe_relpath(name, csv_path) if name else None
        path = base / rel if rel else None
        if path is None or not path.is_file() or path.is_symlink():
            continue  # reported as a finding when labels are read
        budget.add_file(name)
        with open(path, "rb") as src:
            _copy_stream(src, dest / rel, name, budget)
    shutil.copyfile(csv_path, dest / LABELS_CSV)


def _unpack(source: Path, dest: Path, limits: IngestLimits) -> None:
    name = source.name.lower()
    if source.is_dir():
        _copy_folder(source, dest, limits)
    elif name.endswith(".csv"):
        _copy_csv_batch(source, dest, limits)
    elif name.endswith(".zip"):
        _extract_zip(source, dest, limits)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        _extract_tar(source, dest, limits)
    else:
        raise BatchRefused(
            "unsupported_format",
            source,
            "not a zip, tar, tar.gz, folder or CSV of image paths and labels",
        )


# --------------------------------------------------------------------------- labelling


def _is_junk(rel: PurePosixPath) -> bool:
    return any(part in JUNK_NAMES or part.startswith(".") for part in rel.parts)


def _content_root(files_dir: Path) -> Path:
    """Descend through a single wrapping folder (``batch.zip`` -> ``batch/cat/1.jpg``)."""
    root = files_dir
    while True:
        entries = [e for e in root.iterdir() if not _is_junk(PurePosixPath(e.name))]
        dirs = [e for e in entries if e.is_dir()]
        if len(entries) != 1 or len(dirs) != 1:
            return root
        inner = dirs[0]
        has_images = any(
            f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS for f in inner.iterdir()
        )
        if has_images:
            return root  # a single class folder, not a wrapper
        root = inner


def _label_from_csv(
    root: Path, files_dir: Path, all_files: list[PurePosixPath], source: Path
) -> tuple[list[BatchFile], list[Finding]]:
    files, findings = [], []
    # where the user's files are: the CSV's own folder when the batch is a bare CSV
    origin = source.parent if source.is_file() and source.suffix.lower() == ".csv" else root
    named: set[PurePosixPath] = set()
    for line, name, label in _read_labels_csv(root / LABELS_CSV):
        rel = _safe_relpath(name, root / LABELS_CSV) if name else None
        if rel is None:
            findings.append(Finding("labels_csv", f"{LABELS_CSV}:{line}", "empty filename"))
            continue
        full = (root / rel).relative_to(files_dir)
        named.add(PurePosixPath(full))
        if not (root / rel).is_file():
            where = _deeper(origin, rel)
            hint = f"; it is in {where}/: paths are relative to the CSV's folder" if where else ""
            findings.append(
                Finding("missing_file", str(rel), f"named in {LABELS_CSV} line {line}{hint}")
            )
        elif rel.suffix.lower() not in IMAGE_EXTENSIONS:
            findings.append(Finding("not_an_image", str(rel), NOT_AN_IMAGE))
        else:
            files.append(BatchFile(str(PurePosixPath(full)), label))
    csv_rel = PurePosixPath((root / LABELS_CSV).relative_to(files_dir))
    for rel in all_files:
        if rel not in named and rel != csv_rel:
            findings.append(Finding("unlabelled_file", str(rel), f"not named in {LABELS_CSV}"))
    return files, findings


def _label_from_folders(
    root: Path, files_dir: Path, all_files: list[PurePosixPath]
) -> tuple[list[BatchFile], list[Finding]]:
    files, findings = [], []
    top = {p.name for p in root.iterdir() if p.is_dir() and not _is_junk(PurePosixPath(p.name))}
    split_layout = "holdout" in top and top <= set(SPLITS)
    for rel_full in all_files:
        rel = PurePosixPath((files_dir / rel_full).relative_to(root))
        depth = 2 if split_layout else 1
        if len(rel.parts) <= depth:
            findings.append(Finding("unlabelled_file", str(rel_full), "not inside a class folder"))
        elif rel.suffix.lower() not in IMAGE_EXTENSIONS:
            findings.append(
                Finding("not_an_image", str(rel_full), "extension is not an image type")
            )
        elif split_layout:
            files.append(BatchFile(str(rel_full), rel.parts[1], rel.parts[0]))
        else:
            files.append(BatchFile(str(rel_full), rel.parts[0]))
    return files, findings


def _label(files_dir: Path, source: Path) -> tuple[list[BatchFile], list[Finding]]:
    all_files = sorted(
        rel
        for p in files_dir.rglob("*")
        if p.is_file() and not _is_junk(rel := PurePosixPath(p.relative_to(files_dir)))
    )
    if not all_files:
        raise BatchRefused("empty_batch", source, "holds no files")
    archives = [f for f in all_files if f.name.lower().endswith((".zip", ".tar", ".tgz", ".gz"))]
    if len(archives) == len(all_files):
        raise BatchRefused(
            "nested_archive",
            source,
            f"holds only another archive ({archives[0]}); upload that archive itself",
        )
    root = _content_root(files_dir)
    if (root / LABELS_CSV).is_file():
        return _label_from_csv(root, files_dir, all_files, source)
    return _label_from_folders(root, files_dir, all_files)


def stage_batch(
    source: Path, staging_root: Path, limits: IngestLimits, batch_id: str | None = None
) -> StagedBatch:
    """Unpack ``source`` into ``staging_root/<batch_id>/files`` and label its files.

    Args:
        source: zip/tar/tar.gz archive, folder, or CSV of image paths and labels.
        staging_root: where batches are staged; the batch directory appears atomically.
        limits: caps on file count and sizes.
        batch_id: defaults to a new :func:`new_batch_id`.

    Returns:
        The staged batch with its labelled image files and per-file findings.

    Raises:
        BatchRefused: the batch as a whole is unsafe or unreadable; nothing is left behind.
    """
    source = Path(source)
    if not source.exists():
        raise BatchRefused("missing", source, "no such file or folder")
    batch_id = batch_id or new_batch_id()
    staging_root.mkdir(parents=True, exist_ok=True)
    partial = staging_root / f".{batch_id}.partial"
    root = staging_root / batch_id
    try:
        (partial / "files").mkdir(parents=True)
        (partial / STAGING_OWNER).write_text(f"{socket.gethostname()}:{os.getpid()}")
        _unpack(source, partial / "files", limits)
        files, findings = _label(partial / "files", source)
        if not files and not findings:
            raise BatchRefused("empty_batch", source, "holds no images")
        partial.rename(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return StagedBatch(batch_id, source, root, files, findings)


# --------------------------------------------------------------------------- manifest


def _init_worker(max_pixels: int, pool: bool = False) -> None:
    Image.MAX_IMAGE_PIXELS = max_pixels
    if pool:
        plain_signals()


def inspect_image(path: Path, max_pixels: int) -> tuple:
    """(width, height, mode, format, bytes, sha256, decodable, reason, phash) of one file."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            mode, fmt = image.mode, image.format
            if width * height > max_pixels:
                reason = (
                    f"decompression bomb: {width}x{height} pixels exceeds "
                    f"{max_pixels} (ingest.max_pixels)"
                )
                return width, height, mode, fmt, len(data), digest, False, reason, None
            image.load()
            phash = perceptual_hash(image)
    except Image.DecompressionBombError as exc:
        reason = f"decompression bomb: {exc}"
        return None, None, None, None, len(data), digest, False, reason, None
    except Exception as exc:
        reason = f"cannot decode: {exc}" if str(exc) else f"cannot decode: {type(exc).__name__}"
        return None, None, None, None, len(data), digest, False, reason, None
    return width, height, mode, fmt, len(data), digest, True, "", phash


def perceptual_hash(image: Image.Image) -> str:
    """imagehash's 64-bit pHash (16 hex digits) of a loaded image, on its RGB form."""
    import imagehash

    from pipelines.images.decode import to_rgb

    factor = min(image.size) // 256  # pHash looks at 32x32: shrink a 50 MP photo first
    if factor > 1:
        # a box filter by an integer factor (cheap); modes reduce() lacks (palette, 1-bit)
        # are converted at full size
        with contextlib.suppress(ValueError, NotImplementedError):
            image = image.reduce(factor)
    return str(imagehash.phash(to_rgb(image)))


def _inspect_task(args: tuple[str, int]) -> tuple:
    path, max_pixels = args
    return inspect_image(Path(path), max_pixels)


def build_manifest(
    batch: StagedBatch,
    limits: IngestLimits,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One row per image of the batch: the table validation runs on.

    Large batches are decoded in a process pool (``limits.workers``, default one per core).
    ``progress(done, total)`` is called as images are inspected.
    """
    tasks = [(str(batch.files_dir / f.path), limits.max_pixels) for f in batch.files]
    total = len(tasks)
    rows: list[tuple] = []
    if total < POOL_THRESHOLD:
        _init_worker(limits.max_pixels)
        rows = [_inspect_task(t) for t in tasks]
    else:
        workers = limits.workers or os.cpu_count() or 1
        with get_context("fork").Pool(workers, _init_worker, (limits.max_pixels, True)) as pool:
            for row in pool.imap(_inspect_task, tasks, chunksize=256):
                rows.append(row)
                if progress and len(rows) % 1000 == 0:
                    progress(len(rows), total)
    if progress:
        progress(total, total)
    described = pd.DataFrame(rows, columns=MANIFEST_COLUMNS[3:])  # what inspect_image returns
    files = pd.DataFrame(
        {
            "path": [f.path for f in batch.files],
            "label": [f.label for f in batch.files],
            "split": [f.split for f in batch.files],
        },
    )
    manifest = pd.concat([files, described], axis=1)[MANIFEST_COLUMNS]
    return manifest.astype(
        {
            "width": "Int64",
            "height": "Int64",
            "bytes": "int64",
            "decodable": "bool",
            "label": object,
        }
    )


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    """Save a manifest as CSV; :func:`read_manifest` gives it back with its types."""
    manifest.to_csv(path, index=False)


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest written by :func:`write_manifest`, with the types :func:`build_manifest`
    gives (labels stay text: ``7``, never ``7.0``; empty cells are missing values)."""
    manifest = pd.read_csv(
        path,
        keep_default_na=False,
        dtype={"split": object, "label": str, "path": str, "sha256": str, "phash": str},
    ).replace({"split": {"": None}})
    manifest["width"] = pd.to_numeric(manifest["width"]).astype("Int64")
    manifest["height"] = pd.to_numeric(manifest["height"]).astype("Int64")
    manifest["mode"] = manifest["mode"].replace("", None)
    return manifest
