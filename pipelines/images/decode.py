"""Images as the model sees them: one decoder for training, evaluation and serving.

Every image reaches a model through :func:`to_rgb` and :func:`to_model_input`: EXIF
orientation applied, 16-bit and float images scaled to 8 bits, transparency composited on
white, converted to RGB, bicubic resize to the model's input size. Files from a dataset go
through :func:`load_images`; untrusted uploads through :func:`decode_upload`, which also
refuses non-images, truncated files and decompression bombs. No TensorFlow here, so the
serving worker that decodes uploads stays light.
"""

from __future__ import annotations

import io
import math
import os
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipelines.images.names import natural_sorted

# What Pillow may open: the formats a batch may hold (see ``pipelines.data.ingest``).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
POOL_THRESHOLD = 2_000  # below this, decoding in-process beats starting a pool


class BadImage(ValueError):
    """An upload that is not a usable image; the message says which rule it broke."""


@dataclass
class ImageSet:
    """Decoded images (N, H, W, 3 uint8) with integer labels indexing ``class_names``."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.x[index], self.y[index], self.class_names)

    def only(self, classes: list[str]) -> ImageSet:
        """The images whose class is among ``classes``."""
        keep = np.isin(np.array(self.class_names)[self.y], classes)
        return self.take(np.flatnonzero(keep))

    def relabel(self, class_names: list[str]) -> ImageSet:
        """The same images with labels indexing another (super)set of class names."""
        present = {self.class_names[i] for i in np.unique(self.y)}
        missing = sorted(present - set(class_names))
        if missing:
            raise ValueError(f"classes {missing} are not among {class_names}")
        mapping = np.array(
            [class_names.index(c) if c in class_names else -1 for c in self.class_names]
        )
        return ImageSet(self.x, mapping[self.y], list(class_names))

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        names = sets[0].class_names
        assert all(s.class_names == names for s in sets), "relabel to the same classes first"
        return ImageSet(
            np.concatenate([s.x for s in sets]), np.concatenate([s.y for s in sets]), names
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image as RGB: EXIF orientation applied, 16-bit and float scaled to 8 bits,
    transparency composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_model_input(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An opened image as the (H, W, 3) uint8 array of the model's input ``size``."""
    rgb = to_rgb(image)
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), resample=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def load_rgb(path: Path) -> Image.Image:
    """An accepted image file (a path or a file object) as RGB (see :func:`to_rgb`)."""
    with Image.open(path) as image:
        return to_rgb(image)


def open_upload(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Untrusted bytes opened (the header read, the pixels not yet decoded) and held to
    ``max_pixels``, or :class:`BadImage` naming the rule broken."""
    if not data:
        raise BadImage(f"{name}: empty upload")
    with _named_errors(name):
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(
                f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
                "(decompression bomb guard)"
            )
    return image


def load_upload(image: Image.Image, size: tuple[int, int], name: str = "image") -> np.ndarray:
    """An :func:`open_upload` image decoded as the model's input, or :class:`BadImage`."""
    with _named_errors(name):
        image.load()
    return to_model_input(image, size)


def decode_upload(
    data: bytes, size: tuple[int, int], max_pixels: int, name: str = "image"
) -> np.ndarray:
    """Untrusted bytes as the model's input, or :class:`BadImage` naming the rule broken."""
    return load_upload(open_upload(data, max_pixels, name), size, name)


@contextmanager
def _named_errors(name: str):
    """PIL's errors on untrusted bytes as :class:`BadImage` naming the upload."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"{name}: too many pixels (decompression bomb guard)") from exc
        except Image.UnidentifiedImageError as exc:
            raise BadImage(f"{name}: not a JPEG, PNG, WebP, BMP, GIF or TIFF image") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(f"{name}: truncated or corrupt image ({exc})") from exc


def plain_signals() -> None:
    """In a forked pool worker: the default signal handlers, not the parent's (a worker
    that inherits an orchestrator's SIGTERM handler can hang the pool on shutdown)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; workers just stop


def _decode_file(task: tuple[str, int, int]) -> np.ndarray:
    path, height, width = task
    with Image.open(path) as image:
        return to_model_input(image, (height, width))


def load_images(
    paths: list[Path],
    labels: list[str],
    class_names: list[str],
    size: tuple[int, int],
    workers: int = 0,
) -> ImageSet:
    """Decode image files into an :class:`ImageSet` at ``size`` (height, width); large sets
    in a process pool (``workers``, default one per core)."""
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {class_names}")
    tasks = [(str(p), size[0], size[1]) for p in paths]
    if len(tasks) < POOL_THRESHOLD:
        arrays = [_decode_file(t) for t in tasks]
    else:
        with get_context("fork").Pool(workers or os.cpu_count() or 1, plain_signals) as pool:
            arrays = pool.map(_decode_file, tasks, chunksize=256)
    x = np.stack(arrays) if arrays else np.zeros((0, *size, 3), np.uint8)
    y = np.array([class_names.index(label) for label in labels], dtype=np.int64)
    return ImageSet(x, y, list(class_names))


def images_from_rows(
    root: Path, rows, size: tuple[int, int], class_names: list[str] | None = None
) -> ImageSet:
    """Decode the files of table rows (``path`` relative to ``root``, ``label``)."""
    names = class_names or natural_sorted(rows["label"].unique())
    return load_images([root / p for p in rows["path"]], rows["label"].tolist(), names, size)


def stratified_split(
    y: np.ndarray, share: float, seed: int, min_rest: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with ``share`` of each class held, at least one per class, but
    never so many that fewer than ``min_rest`` of a class stay in ``rest``."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        n = min(max(1, round(len(members) * share)), len(members) - min_rest)
        held += members[: max(n, 0)].tolist()
    held_mask = np.zeros(len(y), bool)
    held_mask[held] = True
    return np.flatnonzero(~held_mask), np.flatnonzero(held_mask)


def stratified_sample(y: np.ndarray, total: int, seed: int) -> np.ndarray:
    """About ``total`` indices spread evenly over the classes of ``y`` (fewer if a class
    has fewer)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = math.ceil(total / max(len(classes), 1))
    picked = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def thumbnail_grid(images: list, captions: list[str], size: int = 64, columns: int = 8) -> bytes:
    """A PNG grid of thumbnails (encoded image bytes or uint8 arrays) with a caption under
    each: what a report shows of the images it names."""
    import io

    from PIL import ImageDraw

    rows = max(1, math.ceil(len(images) / columns))
    cell_h = size + 14
    sheet = Image.new("RGB", (columns * size, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        try:
            if isinstance(image, np.ndarray):
                picture = Image.fromarray(image)
            else:
                picture = load_rgb(io.BytesIO(image) if isinstance(image, bytes) else image)
        except Exception:  # a logged image retention removed, or unreadable: a grey cell
            picture = Image.new("RGB", (size, size), "#ccc")
        picture.thumbnail((size, size))
        x, y = (i % columns) * size, (i // columns) * cell_h
        sheet.paste(picture, (x + (size - picture.width) // 2, y))
        draw.text((x + 2, y + size), caption[: size // 6], fill="black")
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()
