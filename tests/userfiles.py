"""Fixtures of the model files and datasets real users bring, made here (nothing downloads).

- :func:`teachable_machine_h5`: the structure of a Google Teachable Machine image export
  (Keras 2.4 ``keras_model.h5`` + ``labels.txt``): an outer Sequential holding a Sequential
  trunk (a MobileNetV2 0.35 functional model at 224x224 cut at ``out_relu`` + global pooling)
  and a Sequential head (Dense 100 relu, Dense N softmax without bias); inputs in [-1, 1],
  scaling not in the model; ``DepthwiseConv2D`` configs carry ``groups: 1``. Written by
  tf-keras, then its config rewritten the way Keras 2.4 wrote it (no ``module`` keys).
- :func:`lambda_h5`: a Keras 2 file whose Lambda layer's marshalled code writes a file.
- :func:`custom_layer_h5`: a Keras 2 file naming a custom layer class.
- :func:`saved_model_zip`: a zipped SavedModel directory.
- :func:`shapes`: a synthetic traffic-sign-like task (40 classes of coloured, marked shapes
  on noise, 30x30) that a small CNN learns to >= 99%; :func:`no_bn_cnn_h5` trains such a
  CNN without batch norm, with Adam on [0, 1] inputs, in Keras 2 and saves it, as people
  export theirs.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _as_keras24(path: Path) -> None:
    """Rewrite an h5 written by tf-keras 2.21 the way Keras 2.4 wrote it."""
    import h5py

    def old(node):
        if isinstance(node, dict):
            return {
                key: old(value)
                for key, value in node.items()
                if key not in ("module", "registered_name", "build_config")
            }
        if isinstance(node, list):
            return [old(value) for value in node]
        return node

    with h5py.File(path, "a") as handle:
        config = old(json.loads(handle.attrs["model_config"]))
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = "2.4.0"


def teachable_machine_h5(
    folder: Path, classes: list[str], size: int = 224, seed: int = 0, images=None
):
    """Write ``keras_model.h5`` and ``labels.txt`` as Teachable Machine exports them.

    With ``images`` (uint8, N x size x size x 3), the random trunk's batch-norm statistics
    are set from them first (one pass in training mode with momentum 0), so its features
    carry information, as a pretrained trunk's would (nothing downloads here).

    Returns:
        (h5 path, labels path, the tf-keras model that wrote it).
    """
    import tf_keras as k2

    k2.utils.set_random_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    trunk = k2.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=0.35, include_top=False, weights=None
    )
    base = k2.Model(trunk.inputs, trunk.get_layer("out_relu").output, name="model1")
    features = k2.Sequential([base, k2.layers.GlobalAveragePooling2D()], name="sequential_1")
    head = k2.Sequential(
        [
            k2.layers.Dense(100, activation="relu", name="dense_Dense1"),
            k2.layers.Dense(
                len(classes), activation="softmax", use_bias=False, name="dense_Dense2"
            ),
        ],
        name="sequential_3",
    )
    model = k2.Sequential([features, head], name="sequential_4")
    model.build((None, size, size, 3))
    if images is not None:
        norms = [layer for layer in base.layers if isinstance(layer, k2.layers.BatchNormalization)]
        for layer in norms:
            layer.momentum = 0.0
        base(images.astype("float32") / 127.5 - 1.0, training=True)
        for layer in norms:
            layer.momentum = 0.999
    h5 = folder / "keras_model.h5"
    model.save(h5)
    _as_keras24(h5)
    labels = folder / "labels.txt"
    labels.write_text("".join(f"{i} {name}\n" for i, name in enumerate(classes)))
    return h5, labels, model


def lambda_h5(path: Path, marker: Path) -> Path:
    """A Keras 2 h5 whose Lambda layer writes ``marker`` when the model is built."""
    import tf_keras as k2

    target = str(marker)

    def touch(x):
        with open(target, "w") as handle:  # runs whenever the layer is built or called
            handle.write("code ran")
        return x

    inputs = k2.Input((8, 8, 3))
    x = k2.layers.Lambda(touch)(inputs)
    x = k2.layers.GlobalAveragePooling2D()(x)
    outputs = k2.layers.Dense(2, activation="softmax")(x)
    k2.Model(inputs, outputs).save(path)
    marker.unlink(missing_ok=True)  # building it here ran the code once
    return path


def custom_layer_h5(path: Path) -> Path:
    """A Keras 2 h5 naming a custom layer class ``Swish6``."""
    import h5py
    import tf_keras as k2

    inputs = k2.Input((8, 8, 3))
    x = k2.layers.Activation("relu", name="swish6")(inputs)
    x = k2.layers.GlobalAveragePooling2D()(x)
    k2.Model(inputs, k2.layers.Dense(2, activation="softmax")(x)).save(path)
    with h5py.File(path, "a") as handle:
        text = handle.attrs["model_config"]
        text = text.decode() if isinstance(text, bytes) else text
        handle.attrs["model_config"] = text.replace(
            '"class_name": "Activation"', '"class_name": "Swish6"', 1
        )
    return path


def saved_model_zip(path: Path) -> Path:
    """A zipped TensorFlow SavedModel folder (what ``model.export()`` writes)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("my_model/saved_model.pb", b"\x08\x01")
        archive.writestr("my_model/variables/variables.index", b"")
    return path


# --------------------------------------------------------------------------- a no-BN CNN

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {"red": (210, 30, 30), "blue": (30, 60, 210), "yellow": (220, 200, 30),
           "green": (30, 160, 60)}  # fmt: skip
MARKS = ("plain", "dotted")


def shape_classes() -> list[str]:
    """40 sign-like classes: shape x colour x (a white dot in the middle or not)."""
    return [f"{c} {s} {m}" for s in SHAPES for c in COLOURS for m in MARKS]


def shapes(
    n: int, seed: int, size: int = 30, only: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images of coloured signs on noisy backgrounds, and their labels (of the
    class indices ``only``, or of all 40)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    classes = shape_classes()
    x = np.empty((n, size, size, 3), np.uint8)
    y = rng.choice(only, n) if only else rng.integers(0, len(classes), n)
    for i, label in enumerate(y):
        colour_name, shape, mark = classes[label].split(" ")
        background = rng.integers(70, 220, 3)
        noise = rng.normal(0, 22, (size, size, 3))
        image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        r = rng.uniform(0.28, 0.45) * size
        cx, cy = rng.uniform(r, size - r, 2)
        shade = rng.uniform(0.6, 1.15)  # lighting
        colour = tuple(
            int(np.clip(c * shade + rng.normal(0, 15), 0, 255)) for c in COLOURS[colour_name]
        )
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif shape == "square":
            draw.rectangle([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], fill=colour)
        elif shape == "triangle":
            draw.polygon(
                [(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour
            )
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
        else:
            w = r * 0.35
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
        if mark == "dotted":
            d = r * 0.28
            draw.ellipse([cx - d, cy - d, cx + d, cy + d], fill=(245, 245, 245))
        x[i] = np.asarray(image)
    return x, y


def no_bn_cnn_h5(path: Path, x: np.ndarray, y: np.ndarray, epochs: int = 12, seed: int = 0):
    """Train a small CNN without batch norm (Adam, inputs in [0, 1]) in Keras 2 and save it.

    Returns:
        The tf-keras model.
    """
    import tf_keras as k2

    k2.utils.set_random_seed(seed)
    n_classes = int(y.max()) + 1
    model = k2.Sequential(
        [
            k2.Input(x.shape[1:]),
            k2.layers.Conv2D(32, 5, activation="relu"),
            k2.layers.Conv2D(32, 5, activation="relu"),
            k2.layers.MaxPool2D(),
            k2.layers.Dropout(0.25),
            k2.layers.Conv2D(64, 3, activation="relu"),
            k2.layers.Conv2D(64, 3, activation="relu"),
            k2.layers.MaxPool2D(),
            k2.layers.Dropout(0.25),
            k2.layers.Flatten(),
            k2.layers.Dense(256, activation="relu"),
            k2.layers.Dropout(0.5),
            k2.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32") / 255.0, y, epochs=epochs, batch_size=64, verbose=0)
    model.save(path)
    import h5py

    with h5py.File(path, "a") as handle:
        handle.attrs["keras_version"] = "2.6.0"
    return model


# --------------------------------------------------------------------------- messy photos


def messy_photo_set(root: Path, per_class: int = 12, seed: int = 0, big: int = 3000) -> dict:
    """A vehicle-photo-like batch as people collect them: photos of many sizes (one up to
    ``big`` px), RGBA and palette PNGs among JPEGs, ``.jpg/.JPG/.jpeg/.png``, and exact
    duplicate pairs (the same file under two names). Returns what was written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = ["bus", "car", "motorbike", "truck"]
    made = {"files": 0, "duplicates": 0}
    suffixes = [".jpg", ".JPG", ".jpeg", ".png"]
    for c, label in enumerate(classes):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(60, 900, 2))
            if c == 0 and i == 0:
                w, h = big, big * 2 // 3
            base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
            colour = rng.uniform(0.2, 1.0, 3)[None, None, :]
            pixels = base * colour + rng.normal(0, 12, (h, 1, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            suffix = suffixes[i % 4]
            path = folder / f"IMG_{c}{i:03d}{suffix}"
            if suffix == ".png" and i % 8 == 3:
                image.convert("RGBA").save(path)
            elif suffix == ".png" and i % 8 == 7:
                image.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
            else:
                image.save(path, format="PNG" if suffix == ".png" else "JPEG", quality=90)
            made["files"] += 1
        copy = folder / f"IMG_{c}000 (1).jpg"  # a duplicate as a file browser names it
        copy.write_bytes((folder / f"IMG_{c}000.jpg").read_bytes())
        made["files"] += 1
        made["duplicates"] += 1
    return made


def write_signs(folder: Path, n: int, seed: int, only: list[int] | None = None) -> Path:
    """``n`` sign images (see :func:`shapes`) as ``folder/<class>/<i>.png``."""
    from PIL import Image

    names = shape_classes()
    x, y = shapes(n, seed, only=only)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / names[label] / f"{seed}-{i:04d}.png")
    return folder
