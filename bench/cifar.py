"""CIFAR-10 from the shared tarball, decoded, for the benches."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.images.decode import ImageSet


def read_cifar(
    archive: Path, per_class: int | None = None, under: tuple[str, ...] = ()
) -> ImageSet:
    """The tarball's images (the first ``per_class`` of each class, in the tarball's
    order; None: all of them, about 10 s; ``under``: only paths starting so), decoded."""
    pixels, labels, seen = [], [], {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            if under and not member.name.startswith(under):
                continue
            label = member.name.split("/")[-2]
            if per_class is not None and seen.get(label, 0) >= per_class:
                continue
            seen[label] = seen.get(label, 0) + 1
            data = tar.extractfile(member).read()
            pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(label)
    classes = sorted(set(labels))
    return ImageSet(np.stack(pixels), np.array([classes.index(c) for c in labels]), classes)
