"""One decoder: the training loader and the serving decoder give the same pixels for the
awkward images users have (16-bit PNG, CMYK JPEG, palette GIF with transparency, a photo
rotated by its EXIF tag), and serving stays free of TensorFlow."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.images.decode import BadImage, decode_upload, load_images

SIZE = (12, 20)  # height, width: not square, so a lost rotation shows


def _gradient(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1).astype(np.uint8)


def _sixteen_bit(path: Path) -> None:
    values = (np.linspace(0, 65535, 30 * 40).reshape(30, 40)).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(path)


def _cmyk(path: Path) -> None:
    Image.fromarray(_gradient(30, 40)).convert("CMYK").save(path, quality=95)


def _palette_with_transparency(path: Path) -> None:
    image = Image.fromarray(_gradient(30, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    image.save(path, transparency=0)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_gradient(40, 24)).save(path, exif=exif, quality=95)


MAKERS = {
    "sixteen.png": _sixteen_bit,
    "cmyk.jpg": _cmyk,
    "palette.gif": _palette_with_transparency,
    "rotated.jpg": _exif_rotated,
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_training_and_serving_decode_the_same_pixels(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    MAKERS[name](path)
    trained = load_images([path], ["x"], ["x"], SIZE).x[0]
    served = decode_upload(path.read_bytes(), SIZE, max_pixels=10_000_000, name=name)
    assert trained.shape == served.shape == (*SIZE, 3) and trained.dtype == np.uint8
    np.testing.assert_array_equal(trained, served)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    _sixteen_bit(tmp_path / "a.png")
    pixels = decode_upload((tmp_path / "a.png").read_bytes(), SIZE, 10_000_000)
    assert 100 < pixels.mean() < 155  # a 0..65535 ramp lands mid-grey, not all white


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    _exif_rotated(tmp_path / "r.jpg")
    with Image.open(tmp_path / "r.jpg") as raw:
        assert raw.size == (24, 40)  # stored portrait
    rotated = load_images([tmp_path / "r.jpg"], ["x"], ["x"], (24, 40)).x[0]
    assert rotated.shape == (24, 40, 3)
    # Turned clockwise: stored column c is displayed row c (red grows down the rows), stored
    # row r is displayed column H-1-r (green, which grew down the stored rows, falls left to
    # right). Unrotated, red would grow along the columns instead.
    red, green = rotated[..., 0].astype(int), rotated[..., 1].astype(int)
    assert red[-1].mean() - red[0].mean() > 150
    assert green[:, 0].mean() - green[:, -1].mean() > 150


def test_bad_uploads_name_the_rule(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match="empty upload"):
        decode_upload(b"", SIZE, 1000, "e.png")
    with pytest.raises(BadImage, match=r"t\.jpg: not a JPEG"):
        decode_upload(b"hello", SIZE, 1000, "t.jpg")
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, "PNG")
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_upload(buffer.getvalue(), SIZE, 1000, "big.png")


def test_the_decoder_imports_without_tensorflow() -> None:
    code = "import sys, pipelines.images.decode; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
