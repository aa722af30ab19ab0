"""Uploaded images: decode untrusted bytes into the uint8 RGB arrays the model takes.

Only JPEG, PNG, WebP and BMP are accepted. A decompression bomb (more pixels than the
limit), a truncated file or anything that is not one of those formats raises
:class:`BadImage` with a message meant for the client. Decoding matches what training saw:
EXIF orientation applied, transparency composited on white, bicubic resize to the model's
input size.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


class BadImage(ValueError):
    """An upload that is not a usable image; the message says which rule it broke."""


def decode(data: bytes, size: tuple[int, int], max_pixels: int, name: str = "image") -> np.ndarray:
    """``data`` as an (H, W, 3) uint8 array of the model's input ``size`` (height, width)."""
    if not data:
        raise BadImage(f"{name}: empty upload")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
                    "(decompression bomb guard)"
                )
            image.load()
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"{name}: too many pixels (decompression bomb guard)") from exc
        except Image.UnidentifiedImageError as exc:
            raise BadImage(f"{name}: not a JPEG, PNG, WebP or BMP image") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(f"{name}: truncated or corrupt image ({exc})") from exc
    return np.asarray(_as_model_input(image, size), dtype=np.uint8)


def _as_model_input(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    return image
