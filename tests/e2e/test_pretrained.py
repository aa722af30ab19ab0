"""A new classifier from a team's photos on the ImageNet MobileNetV2: `refit train bootstrap
--source PHOTOS` on photos of mixed sizes, modes and EXIF rotations, the saved model loaded in
safe mode, fine-tuned with the recipe for pretrained models, and exported to ONNX (what
serving runs) in agreement with Keras; the converted weights cached for the second run."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.policies import FinetuneConfig
from core.settings import get_settings
from pipelines.images.decode import ImageSet
from pipelines.models import engine
from pipelines.models.modelfile import load_refit_model
from pipelines.models.predict import predict_proba
from pipelines.training.finetune import finetune, recipe_for
from tests.conftest import git_repo

pytestmark = pytest.mark.e2e

REFIT = str(Path(sys.executable).parent / "refit")
SIZE = 64  # small for speed; the guide's photo default is 224
BACKBONE = 96  # a resize inside: the fine-tune still computes features once
CLASSES = ("automobile", "bird")


def cifar(per_class: int) -> dict[str, list[np.ndarray]]:
    """The first ``per_class`` images of two CIFAR-10 classes from the shared tarball."""
    found: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    with tarfile.open(get_settings().cifar10_archive) as tar:
        for member in tar:
            label = member.name.split("/")[-2] if member.isfile() else None
            if label in found and len(found[label]) < per_class:
                data = tar.extractfile(member).read()
                found[label].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            if all(len(v) == per_class for v in found.values()):
                return found
    raise AssertionError("the tarball lacks images")


def write_photos(root: Path, images: dict[str, list[np.ndarray]]) -> Path:
    """Photo-like files: enlarged to camera-ish sizes, some greyscale, palette or RGBA, some
    stored rotated with an EXIF orientation that turns them upright."""
    for label, pixels in images.items():
        (root / label).mkdir(parents=True)
        for i, x in enumerate(pixels):
            image = Image.fromarray(x).resize((320 + 7 * i, 240 + 5 * i), Image.BICUBIC)
            name = root / label / f"IMG_{i:04d}.jpg"
            if i % 5 == 1:
                image.convert("L").save(name.with_suffix(".png"))
            elif i % 5 == 2:
                image.convert("RGBA").save(name.with_suffix(".png"))
            elif i % 5 == 3:
                exif = Image.Exif()
                exif[0x0112] = 6  # rotate 90° clockwise to view
                image.transpose(Image.Transpose.ROTATE_90).save(name, exif=exif, quality=90)
            else:
                image.save(name, quality=90)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    images = cifar(40)
    return write_photos(tmp_path_factory.mktemp("photos"), images), images


def refit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REFIT, *args], env=env, capture_output=True, text=True, timeout=600)


def bootstrap(env: dict[str, str], source: Path | None, out: Path) -> subprocess.CompletedProcess:
    return refit(env, "train", "bootstrap", *(["--source", str(source)] if source else []),
                 "--out", str(out))  # fmt: skip


def test_a_classifier_from_photos_on_imagenet_weights(tmp_path, photos, refit_env):
    source, images = photos
    env = {**refit_env,
           "REFIT_ARCHITECTURE__NAME": "mobilenet_v2",
           "REFIT_ARCHITECTURE__WEIGHTS": "imagenet",
           "REFIT_ARCHITECTURE__INPUT_SIZE": str(SIZE),
           "REFIT_ARCHITECTURE__BACKBONE_SIZE": str(BACKBONE),
           "REFIT_TRAIN__VAL_SHARE": "0.2",
           "REFIT_TRAIN__PRETRAINED_EPOCHS": "2"}  # fmt: skip
    first = bootstrap(env, source, tmp_path / "first.keras")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Converting mobilenet_v2-b0353104.pth" in first.stdout
    assert "Pretrained: mobilenet_v2: 64 training and 16 validation images" in first.stdout
    assert "Traceback" not in first.stdout + first.stderr

    # the same photos through intake into the dataset, then a bootstrap from the dataset
    env |= {"REFIT_DVC_REPO": str(git_repo(tmp_path / "repo")),
            "REFIT_VALIDATION__MIN_IMAGES_PER_NEW_CLASS": "3"}  # fmt: skip
    added = refit(env, "data", "add", str(source))
    assert added.returncode == 0, added.stdout + added.stderr
    second = bootstrap(env, None, tmp_path / "second.keras")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Converting" not in second.stdout  # the workspace's cache
    assert "Holdout accuracy" in second.stdout
    cached = list((Path(refit_env["REFIT_WORKSPACE"]) / "weights").glob("mobilenet_v2-*.npz"))
    assert len(cached) == 1

    champion = load_refit_model(tmp_path / "first.keras")  # Keras safe mode
    assert champion.class_names == list(CLASSES)
    assert champion.card["recipe"] == "pretrained"
    assert champion.card["pretrained"]["head"] == "logistic regression"
    assert champion.card["val_accuracy"] >= 0.75  # two easy classes; chance is 0.5

    # fine-tuning picks the gentle recipe for a pretrained model, and may grow the head
    assert recipe_for(champion, FinetuneConfig()) == "gentle"
    x = np.stack([np.asarray(Image.fromarray(p).resize((SIZE, SIZE))) for p in images["bird"]])
    new = ImageSet(x[:12], np.zeros(12, int), ["frog"])
    old = ImageSet(x[12:], np.ones(len(x) - 12, int), list(CLASSES))
    tuned, _ = finetune(champion, new, old, FinetuneConfig(gentle_epochs=1, val_share=0.2),
                        progress=lambda m: None)  # fmt: skip
    assert tuned.class_names == [*CLASSES, "frog"]
    assert tuned.card["finetune_recipe"]["features_cached"]

    # what serving runs: the ONNX export agrees with Keras
    built = engine.build(tuned.model, x[:8])
    assert built.onnx is not None, built.check
    assert built.check["max_abs_diff"] < 1e-4
    probs, features = engine.OnnxEngine(built.onnx)(x[:8])
    np.testing.assert_allclose(probs, predict_proba(tuned.model, x[:8]), atol=1e-4)
    assert features.shape == (8, 1280)  # the pooled ImageNet features: the general embedding


def test_a_photo_set_too_small_for_a_validation_split_says_so(tmp_path, photos, refit_env):
    _, images = photos
    tiny = write_photos(tmp_path / "tiny", {c: v[:1] for c, v in images.items()})
    env = {**refit_env, "REFIT_ARCHITECTURE__NAME": "mobilenet_v2",
           "REFIT_ARCHITECTURE__WEIGHTS": "imagenet"}  # fmt: skip
    result = bootstrap(env, tiny, tmp_path / "m.keras")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "too few images for a validation split: 'automobile' has 1" in result.stderr
    assert not (tmp_path / "m.keras").exists()
