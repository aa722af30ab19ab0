"""Pretrained weights: the .pth reader on the real file and on hostile ones, the converted
MobileNetV2's ImageNet answers on real photos, and the weight sources' errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.policies import ArchitectureConfig
from pipelines.models import backbones, pretrained
from pipelines.models.imagenet import imagenet_classifier, imagenet_embedding
from pipelines.models.torchweights import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    UnsafeWeights,
    read_state_dict,
)
from pipelines.training.architectures import build_model

PHOTOS = Path(__file__).resolve().parents[2] / ".tools" / "imagenet-photos"  # make imagenet-photos
QUIET = dict(progress=lambda message: None)


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_state_dict(pretrained.IMAGENET_PACKAGES["mobilenet_v2"].path())


def test_the_packaged_file_reads_as_torchvision_mobilenet_v2(state):
    assert len(state) == 314
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.18.1.running_var"].shape == (1280,)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.1.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(t).all() for t in state.values())


def _legacy(state_pickle: bytes) -> bytes:
    header = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True})
    )
    return header + state_pickle + pickle.dumps([], protocol=2)


class _Removes:
    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self):
        return (os.remove, (str(self.victim),))


def test_a_pickle_that_calls_anything_else_is_refused_and_nothing_runs(tmp_path):
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(_legacy(pickle.dumps({"w": _Removes(victim)}, protocol=2)))
    with pytest.raises(UnsafeWeights, match=r"refuses to load posix\.remove"):
        read_state_dict(hostile)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (b"PK\x03\x04zip", "zip-format"),
        (pickle.dumps(7) * 3, "not a PyTorch legacy checkpoint"),
        (b"\x80\x02", "not a readable state dict"),
        (_legacy(pickle.dumps({"w": 1.5}, protocol=2)), "is not a tensor"),
    ],
)
def test_files_that_are_not_plain_state_dicts_are_refused(tmp_path, content, rule):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UnsafeWeights, match=rule):
        read_state_dict(path)


def test_a_truncated_file_is_refused(tmp_path, state):
    source = pretrained.IMAGENET_PACKAGES["mobilenet_v2"].path()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(source.read_bytes()[:-1000])
    with pytest.raises(UnsafeWeights, match="truncated"):
        read_state_dict(cut)


def _imagenet_names() -> list[str]:
    """ImageNet's 1,000 classes in the standard order: the list's first 1,000 WordNet ids,
    sorted."""
    ids = (PHOTOS / "imagenet.labels.list").read_text().split()[:1000]
    names = (PHOTOS / "imagenet.shortnames.list").read_text().splitlines()[:1000]
    return [name for _, name in sorted(zip(ids, names, strict=True))]


def _center_crop(path: Path, size: int = 224) -> np.ndarray:
    """torchvision's evaluation transform: shorter side to 256, centre crop 224."""
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype="float32")


@pytest.mark.skipif(
    not (PHOTOS / "imagenet.labels.list").exists(),
    reason="needs Debian's darknet photos: run `make imagenet-photos`",
)
def test_the_converted_network_classifies_real_photos_as_imagenet_does(tmp_path, state):
    converted = backbones.from_torchvision(
        build_model(ArchitectureConfig(name="mobilenet_v2"), 3, **QUIET), state
    )
    assert len(converted) == 104  # 52 convolutions, 52 batch norms: every one

    names = _imagenet_names()
    photos = {"eagle": {"bald eagle"}, "dog": {"malamute", "Siberian husky", "Eskimo dog"},
              "giraffe": {"zebra", "impala"}}  # fmt: skip
    x = np.stack([_center_crop(PHOTOS / f"{p}.jpg") for p in photos])
    keras_probs = imagenet_classifier(224, tmp_path, **QUIET).predict(x, verbose=0)
    embedding = imagenet_embedding(tmp_path, 224, **QUIET)  # the ONNX export the loop uses
    onnx_probs = embedding.imagenet(x.astype(np.uint8))
    np.testing.assert_allclose(onnx_probs, keras_probs, atol=1e-4)
    assert embedding(x.astype(np.uint8)).shape == (3, 1280)
    top5 = [{names[i] for i in np.argsort(-row)[:5]} for row in keras_probs]
    assert names[int(np.argmax(keras_probs[0]))] == "bald eagle"
    for (photo, expected), found in zip(photos.items(), top5, strict=True):
        assert expected & found, f"{photo}: top-5 {found}"
    with pytest.raises(ValueError, match="takes 224x224 RGB images"):
        embedding(np.zeros((1, 32, 32, 3), np.uint8))


def test_weights_are_converted_once_then_read_from_the_cache(tmp_path):
    spec = ArchitectureConfig(
        name="mobilenet_v2", weights="imagenet", input_size=32, backbone_size=32
    )
    said: list[str] = []
    first = build_model(spec, 3, weights_dir=tmp_path, progress=said.append)
    assert any("Converting mobilenet_v2-b0353104.pth" in s for s in said)
    cached = list(tmp_path.glob("mobilenet_v2-*.npz"))
    assert len(cached) == 1
    said.clear()
    second = build_model(spec, 3, weights_dir=tmp_path, progress=said.append)
    assert said == []
    conv = "features_17_conv_2"
    np.testing.assert_array_equal(
        first.get_layer(conv).get_weights()[0], second.get_layer(conv).get_weights()[0]
    )
    cached[0].write_bytes(b"not an npz")  # a damaged cache is converted again
    build_model(spec, 3, weights_dir=tmp_path, progress=said.append)
    assert any("unreadable" in s for s in said)


def test_missing_or_altered_weights_name_the_package_and_the_setting(tmp_path):
    real = pretrained.IMAGENET_PACKAGES["mobilenet_v2"]
    absent = pretrained.WeightsPackage("no-such-weights", "no_such_weights", "w.pth", real.sha256)
    with pytest.raises(
        pretrained.WeightsUnavailable, match=r"no-such-weights.*architecture\.weights"
    ):
        absent.path()
    altered = pretrained.WeightsPackage(real.distribution, real.module, real.file, "0" * 64)
    with pytest.raises(pretrained.WeightsUnavailable, match="altered"):
        altered.path()
    spec = ArchitectureConfig(name="mobilenet_v2", weights=str(tmp_path / "none.pth"))
    with pytest.raises(pretrained.WeightsUnavailable, match="no such file"):
        build_model(spec, 3, weights_dir=tmp_path, **QUIET)
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(_legacy(pickle.dumps({}, protocol=2)))
    spec = ArchitectureConfig(name="mobilenet_v2", weights=str(wrong))
    with pytest.raises(pretrained.WeightsUnavailable, match="not mobilenet_v2 weights"):
        build_model(spec, 3, weights_dir=tmp_path, **QUIET)


def test_imagenet_weights_for_airbench_are_a_settings_error():
    with pytest.raises(ValueError, match="airbench trains from scratch"):
        ArchitectureConfig(name="airbench", weights="imagenet")


@pytest.mark.parametrize("classes", [2, 3])
def test_the_logistic_head_answers_as_the_regression_does(classes):
    from sklearn.linear_model import LogisticRegression

    from pipelines.training.transfer import logistic_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), 40)
    features = rng.normal(size=(len(y), 16)) + y[:, None]
    kernel, bias = logistic_head(features, y, 1.0)
    logits = features @ kernel + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(features, y)
    np.testing.assert_allclose(probs, reference.predict_proba(features), atol=1e-5)
