"""Tiny real runs of the model engine: 3 classes of 24x24 images, one or two epochs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import keras
import numpy as np
import pytest

from core.policies import ArchitectureConfig, FinetuneConfig, TrainConfig
from pipelines.images.decode import ImageSet, stratified_split
from pipelines.models.modelfile import (
    LoadedModel,
    ModelRefused,
    import_model,
    load_refit_model,
    read_class_names,
    save_model,
)
from pipelines.models.predict import accuracy, predict_proba
from pipelines.training.architectures import whitening_weights
from pipelines.training.finetune import finetune
from pipelines.training.scratch import fit_from_scratch
from pipelines.training.surgery import grow_head
from tests.conftest import coloured_images

pytestmark = pytest.mark.e2e

SIZE = 24
SPEC = ArchitectureConfig(input_size=SIZE, widths=(8, 16, 16))
TINY = TrainConfig(epochs=2, batch_size=16, val_share=0.2, patience=0, time_budget_s=120)
QUIET = dict(progress=lambda message: None)


def coloured(classes: list[str], per_class: int, seed: int) -> ImageSet:
    return coloured_images(classes, per_class, seed, SIZE)


CHAMPION_IMAGES = coloured(["red", "green", "blue"], 20, 0)


@pytest.fixture(scope="module")
def champion() -> LoadedModel:
    loaded, result = fit_from_scratch(CHAMPION_IMAGES, SPEC, TINY, **QUIET)
    assert result.epochs_run == 2
    return loaded


def test_bootstrap_makes_a_model_that_carries_its_classes(champion, tmp_path: Path) -> None:
    assert champion.class_names == ["red", "green", "blue"]
    assert champion.model.output_shape == (None, 3)
    assert champion.card["recipe"] == "bootstrap" and champion.card["train_images"] == 48
    _, held = stratified_split(CHAMPION_IMAGES.y, TINY.val_share, TINY.seed)
    val = CHAMPION_IMAGES.take(held)  # the card scores the model it describes
    assert champion.card["val_accuracy"] == round(
        accuracy(predict_proba(champion.model, val.x), val.y), 4
    )
    path = save_model(champion, tmp_path / "m.keras")
    assert read_class_names(path) == ["red", "green", "blue"]
    again = load_refit_model(path)
    x = coloured(["red", "green", "blue"], 2, 1).x
    np.testing.assert_allclose(
        predict_proba(again.model, x), predict_proba(champion.model, x), atol=1e-6
    )


def test_whitening_layer_decorrelates_patches_and_stays_frozen(champion) -> None:
    images = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), np.uint8)
    images[..., 1] = images[..., 0] // 2 + images[..., 1] // 2  # correlated channels
    kernel, bias = whitening_weights(images)
    x = images.astype(np.float32) / 255.0
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    whitened = patches @ kernel.reshape(12, -1)[:, :12] + bias[:12]
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(12), atol=0.05)
    whiten = champion.model.get_layer("whiten")
    assert not whiten.trainable  # fixed from the data; fine-tuning keeps it (next tests)


def test_bfloat16_bootstrap_saves_a_float32_model() -> None:
    config = TINY.model_copy(update={"epochs": 1, "precision": "mixed_bfloat16"})
    loaded, _ = fit_from_scratch(coloured(["red", "green", "blue"], 10, 2), SPEC, config, **QUIET)
    assert loaded.card["precision"] == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in loaded.model.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for others


def test_grown_head_ranks_old_classes_exactly_as_before(champion) -> None:
    grown = grow_head(champion, ["yellow", "cyan"])
    assert grown.class_names == ["red", "green", "blue", "yellow", "cyan"]
    x = coloured(["red", "green", "blue"], 5, 2).x
    before = predict_proba(champion.model, x)
    after = predict_proba(grown.model, x)[:, :3]
    np.testing.assert_array_equal(np.argsort(before, axis=1), np.argsort(after, axis=1))
    np.testing.assert_allclose(after / after.sum(1, keepdims=True), before, rtol=1e-5)
    assert champion.model.output_shape == (None, 3)  # the champion is untouched


def test_finetune_adds_a_class_and_keeps_old_indices(champion) -> None:
    weights = [w.copy() for w in champion.model.get_weights()]
    new = coloured(["red", "yellow"], 12, 3)
    old = coloured(["red", "green", "blue"], 12, 4)
    config = FinetuneConfig(head_epochs=1, epochs=1, batch_size=16, time_budget_s=60)
    challenger, results = finetune(champion, new, old, config, **QUIET)
    assert challenger.class_names == ["red", "green", "blue", "yellow"]
    assert challenger.model.output_shape == (None, 4)
    assert len(results) == 2 and challenger.card["recipe"] == "finetune"
    assert challenger.card["replay_images"] > 0
    for before, after in zip(weights, champion.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(  # the whitening layer never trains
        challenger.model.get_layer("whiten").get_weights()[0],
        champion.model.get_layer("whiten").get_weights()[0],
    )
    assert not challenger.model.get_layer("whiten").trainable


def test_tta_shape_and_determinism(champion) -> None:
    x = coloured(["red", "green", "blue"], 4, 5).x
    first = predict_proba(champion.model, x, tta=True)
    assert first.shape == (12, 3)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first, predict_proba(champion.model, x, tta=True))
    mirrored = predict_proba(champion.model, x[:, :, ::-1], tta=True)
    np.testing.assert_allclose(mirrored, first, atol=1e-6)  # flip-invariant by construction


# --- importing users' models -----------------------------------------------------------------


def user_model(input_shape=(SIZE, SIZE, 3), units: int = 3, lambda_layer: bool = False):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    outputs = keras.layers.Dense(units, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(loss="mse")
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_import_keras_and_legacy_h5(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"user{suffix}"
    original = user_model()
    original.save(path)
    loaded = import_model(path, ["a", "b", "c"])
    assert loaded.class_names == ["a", "b", "c"]
    assert [layer.name for layer in loaded.model.layers[-2:]] == ["logits", "probabilities"]
    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(loaded.model(x), original(x), atol=1e-6)
    resaved = save_model(loaded, tmp_path / "resaved.keras")
    assert load_refit_model(resaved).class_names == ["a", "b", "c"]


def refusal(path: Path, classes=("a", "b", "c"), existing=None) -> str:
    with pytest.raises(ModelRefused) as info:
        import_model(path, list(classes), existing)
    assert str(path) in str(info.value)
    return info.value.reason


def test_refuses_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(os.urandom(2048))
    assert "not a zip" in refusal(path)


def test_refuses_pickle_renamed_h5(tmp_path: Path) -> None:
    path = tmp_path / "evil.h5"
    path.write_bytes(pickle.dumps({"boom": 1}))
    assert "not an HDF5 file" in refusal(path)


def test_refuses_lambda_layer(tmp_path: Path) -> None:
    path = tmp_path / "lambda.keras"
    user_model(lambda_layer=True).save(path)
    assert "Lambda" in refusal(path)


def test_refuses_wrong_input_rank(tmp_path: Path) -> None:
    path = tmp_path / "flat.keras"
    user_model(input_shape=(10,)).save(path)
    assert "HxWx3" in refusal(path)


def test_refuses_grayscale_input(tmp_path: Path) -> None:
    path = tmp_path / "gray.keras"
    user_model(input_shape=(SIZE, SIZE, 1)).save(path)
    assert "3 channels" in refusal(path)


def test_refuses_output_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "four.keras"
    user_model(units=4).save(path)
    assert "4 outputs but 3 class names" in refusal(path)


@pytest.mark.parametrize(
    ("classes", "existing", "message"),
    [
        (["a", "a", "b"], None, "duplicate class names"),
        (["a", " ", "b"], None, "non-empty"),
        (["b", "a", "c"], ["a", "b"], "cannot be reordered"),
    ],
)
def test_refuses_bad_class_lists(tmp_path: Path, classes, existing, message) -> None:
    path = tmp_path / "ok.keras"
    user_model().save(path)
    assert message in refusal(path, classes, existing)
