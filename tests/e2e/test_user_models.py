"""Users' models: what people export imports, what can run code never does, and the pixel
range a model expects is wrapped into it (or measured when nobody knows)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests import userfiles

pytestmark = pytest.mark.e2e
CLASSES = ["cardboard", "paper, recycled", "Кошка"]  # a comma and Cyrillic, as users name them


@pytest.fixture(scope="module")
def teachable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tm")
    h5, labels, original = userfiles.teachable_machine_h5(folder, CLASSES)
    return h5, labels, original


def photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Photo-like float 0-255 images: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(0, 255, (n, 1, 1, 3)) * ramp[None, :, None, None]
    noise = rng.normal(0, 25, (n, size, size, 3))
    return np.clip(base + noise + rng.uniform(0, 80, (n, 1, 1, 3)), 0, 255).astype(np.float32)


def test_keras3_alone_cannot_load_the_teachable_machine_file(teachable) -> None:
    import keras

    with pytest.raises(Exception, match="DepthwiseConv2D"):
        keras.saving.load_model(teachable[0], compile=False, safe_mode=True)


def test_teachable_machine_export_imports_and_matches_the_original(teachable) -> None:
    from pipelines.training.imports import import_user_model

    h5, labels, original = teachable
    imported = import_user_model(h5, labels=labels)
    loaded = imported.loaded
    assert loaded.class_names == CLASSES
    assert loaded.card["pixels"] == "-1-1" and loaded.card["has_batch_norm"]
    names = [layer.name for layer in loaded.model.layers]
    assert names[:2] == ["pixels", "pixel_contract"] and names[-2:] == ["logits", "probabilities"]
    assert not any(hasattr(layer, "layers") for layer in loaded.model.layers)  # flat
    raw = photos(6, 224)
    ours = np.asarray(loaded.model(raw, training=False))
    theirs = original(raw / 127.5 - 1.0, training=False).numpy()  # fed as documented
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_zip_teachable_machine_downloads_imports(teachable, tmp_path: Path) -> None:
    from pipelines.training.imports import import_user_model

    archive = tmp_path / "converted_keras.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(teachable[0], "converted_keras/keras_model.h5")
        handle.write(teachable[1], "converted_keras/labels.txt")
    imported = import_user_model(archive)
    assert imported.loaded.class_names == CLASSES and imported.loaded.card["pixels"] == "-1-1"


def test_labels_file_with_the_wrong_number_of_names_is_refused(teachable, tmp_path) -> None:
    from pipelines.models.modelfile import ModelRefused
    from pipelines.training.imports import import_user_model

    for names in (CLASSES[:2], [*CLASSES, "extra"]):
        labels = tmp_path / "labels.txt"
        labels.write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
        with pytest.raises(ModelRefused, match=f"has 3 outputs but {len(names)} class names"):
            import_user_model(teachable[0], labels=labels)


def test_lambda_code_never_runs_through_any_path(tmp_path: Path) -> None:
    import tf_keras

    from pipelines.models.modelfile import ModelRefused, import_model, load_refit_model
    from pipelines.training.imports import import_user_model

    marker = tmp_path / "pwned"
    evil = userfiles.lambda_h5(tmp_path / "evil.h5", marker)
    # The fixture is real: a plain Keras 2 load runs the marshalled code.
    tf_keras.models.load_model(evil, compile=False, safe_mode=False)
    assert marker.exists()
    marker.unlink()
    refusals = [
        lambda: import_model(evil, ["a", "b"]),
        lambda: import_user_model(evil, ["a", "b"]),
        lambda: import_user_model(evil, ["a", "b"], calibrate_with=tmp_path),
        lambda: load_refit_model(evil),
    ]
    for attempt in refusals:
        with pytest.raises(ModelRefused, match="Lambda: it carries Python code"):
            attempt()
    assert not marker.exists()
    # the CLI (a fresh process: nothing imported before)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "refit"),
            "model",
            "import",
            str(evil),
            "--classes",
            "a,b",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "REFIT_WORKSPACE": str(tmp_path / "ws"), "COLUMNS": "200"},
    )
    assert done.returncode == 1 and "Lambda" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not marker.exists()


def test_custom_layers_and_saved_models_are_refused_with_a_way_out(tmp_path: Path) -> None:
    from pipelines.models.modelfile import ModelRefused, import_model

    custom = userfiles.custom_layer_h5(tmp_path / "custom.h5")
    with pytest.raises(ModelRefused, match="custom class 'Swish6'"):
        import_model(custom, ["a", "b"])
    saved = userfiles.saved_model_zip(tmp_path / "saved_model.zip")
    with pytest.raises(ModelRefused, match=r"SavedModel.*model\.save\('model\.keras'\)"):
        import_model(saved, ["a", "b"])
    folder = tmp_path / "export"
    folder.mkdir()
    with pytest.raises(ModelRefused, match="SavedModel"):
        import_model(folder, ["a", "b"])


@pytest.fixture(scope="module")
def no_bn(tmp_path_factory):
    """A small no-BN CNN trained with Adam on [0, 1] inputs, saved as Keras 2 does."""
    path = tmp_path_factory.mktemp("nobn") / "signs.h5"
    x, y = userfiles.shapes(3000, seed=1)
    userfiles.no_bn_cnn_h5(path, x, y, epochs=8)
    return path


def test_calibration_finds_the_range_and_contradicts_a_wrong_one(no_bn, tmp_path) -> None:
    from pipelines.training.imports import import_user_model

    batch = userfiles.write_signs(tmp_path / "batch", 200, seed=7)
    classes = userfiles.shape_classes()
    chosen = import_user_model(no_bn, classes, calibrate_with=batch)
    assert chosen.calibration.best == "0-1" and chosen.loaded.card["pixels"] == "0-1"
    assert "chosen by calibration" in " ".join(chosen.notes)
    # 0-255: what Refit assumed before; the argmax mostly survives, the confidence does not
    wrong = import_user_model(no_bn, classes, pixel_range="0-255", calibrate_with=batch)
    assert wrong.loaded.card["pixels"] == "0-255"  # the user's word stands, with a warning
    assert "declared pixel range 0-255" in wrong.warnings[0] and "0-1 on" in wrong.warnings[0]
    right = import_user_model(no_bn, classes, pixel_range="0-1", calibrate_with=batch)
    assert right.warnings == []


def test_the_wrapped_contract_equals_the_original_fed_the_documented_way(no_bn) -> None:
    import tf_keras

    from pipelines.images.pixels import parse
    from pipelines.models.modelfile import import_model

    original = tf_keras.models.load_model(no_bn, compile=False)
    raw, _ = userfiles.shapes(16, seed=9)
    for spec, feed in [
        ("0-1", raw / 255.0),
        ("-1-1", raw / 127.5 - 1),
        ("keras.applications.resnet50", raw[..., ::-1] - np.float32([103.939, 116.779, 123.68])),
        ("mean=127.5/std=127.5", raw / 127.5 - 1),
    ]:
        loaded = import_model(no_bn, userfiles.shape_classes(), contract=parse(spec))
        ours = np.asarray(loaded.model(raw.astype("float32"), training=False))
        theirs = original(feed.astype("float32"), training=False).numpy()
        np.testing.assert_allclose(ours, theirs, atol=2e-5, err_msg=spec)


def test_imported_models_serve_through_onnx_like_keras(teachable, no_bn) -> None:
    from pipelines.training.imports import import_user_model
    from serving.engines import best_engine

    for model in (
        import_user_model(teachable[0], labels=teachable[1]).loaded.model,
        import_user_model(no_bn, userfiles.shape_classes(), pixel_range="0-1").loaded.model,
    ):
        size = model.input_shape[1]
        images = photos(4, size).astype("uint8")
        choice = best_engine(model, images, preference="onnx")
        assert choice.max_abs_diff is not None and choice.max_abs_diff <= 1e-5


def test_gentle_finetune_teaches_a_teachable_machine_model_a_class(tmp_path: Path) -> None:
    """96 px so the test is quick; the cached-features path runs as it does at 224 px."""
    from core.policies import FinetuneConfig
    from pipelines.images.decode import ImageSet
    from pipelines.training.finetune import finetune
    from pipelines.training.imports import import_user_model

    names = userfiles.shape_classes()[:3]
    old_x, old_y = userfiles.shapes(240, seed=1, size=96, only=[0, 1])
    new_x, _ = userfiles.shapes(60, seed=2, size=96, only=[2])
    h5, labels, _ = userfiles.teachable_machine_h5(tmp_path, names[:2], size=96, images=old_x[:64])
    champion = import_user_model(h5, labels=labels).loaded
    config = FinetuneConfig(gentle_head_epochs=4, gentle_epochs=2, time_budget_s=120)
    lines: list[str] = []
    tuned, fits = finetune(
        champion, ImageSet(new_x, np.full(60, 2), names), ImageSet(old_x, old_y, names[:2]),
        config, progress=lines.append,
    )  # fmt: skip
    assert tuned.class_names == names and len(fits) == 2
    did = tuned.card["finetune_recipe"]
    assert did["recipe"] == "gentle" and did["features_cached"] and len(did["unfrozen_layers"]) == 6
    assert any("computed once" in line for line in lines)
    assert tuned.card["val_accuracy_after"] >= tuned.card["val_accuracy_before"]
    assert not tuned.model.get_layer("pixel_contract").trainable  # fixed for every recipe
    # the champion itself is untouched
    raw = photos(2, 96)
    np.testing.assert_allclose(
        champion.model(raw), import_user_model(h5, labels=labels).loaded.model(raw), atol=1e-6
    )


def test_a_finetune_that_makes_things_worse_keeps_the_starting_weights(no_bn) -> None:
    from core.policies import FinetuneConfig
    from pipelines.images.decode import ImageSet
    from pipelines.images.pixels import parse
    from pipelines.models.modelfile import import_model
    from pipelines.training.finetune import finetune

    names = userfiles.shape_classes()
    champion = import_model(no_bn, names, contract=parse("0-1"))
    x, y = userfiles.shapes(600, seed=3)
    wrecking = FinetuneConfig(recipe="refit", head_lr=500.0, lr=500.0, head_epochs=1, epochs=1)
    lines: list[str] = []
    tuned, _ = finetune(
        champion, ImageSet(x[:200], y[:200], names), ImageSet(x[200:], y[200:], names),
        wrecking, progress=lines.append,
    )  # fmt: skip
    assert tuned.card["kept_starting_weights"] is True
    assert any("kept the starting weights" in line for line in lines)
    for a, b in zip(tuned.model.get_weights(), champion.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
