"""Bring your own model: the one use case behind `refit model import`, the bootstrap flow
and the Retrain page's model upload.

Takes what people export: a ``.keras``, a Keras 2 ``.h5``, or Teachable Machine's
``converted_keras.zip`` (``keras_model.h5`` + ``labels.txt``); class names from a list, a
class-list file or ``labels.txt``; the pixel range the model expects. With a labelled batch
it calibrates: it reports which pixel range makes the model agree with the labels, uses it
when none was declared, and warns when the declared one is contradicted.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from core.policies import IngestLimits
from core.progress import Progress
from pipelines.images import pixels
from pipelines.models.modelfile import (
    LoadedModel,
    ModelRefused,
    import_model,
    read_class_list,
    with_contract,
)

TEACHABLE_MACHINE = ("keras_model.h5", "labels.txt")
TEACHABLE_MACHINE_PIXELS = "-1-1"  # its MobileNet trunk is fed (x / 127.5) - 1
MAX_MEMBER_MB = 512


@dataclass
class Imported:
    """The imported model and what people should know about how it was imported."""

    loaded: LoadedModel
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: pixels.Calibration | None = None


def import_user_model(
    model: Path,
    classes: list[str] | None = None,
    labels: Path | None = None,
    pixel_range: str | None = None,
    calibrate_with: Path | None = None,
    limits: IngestLimits | None = None,
    existing: list[str] | None = None,
    progress: Progress = print,
) -> Imported:
    """Import a user's classifier (see the module docstring).

    Args:
        model: ``.keras``, ``.h5`` or a Teachable Machine ``.zip``.
        classes: the class names in output order, or None to read them from ``labels``.
        labels: a class-list file (one name per line, or ``labels.txt``'s ``0 name`` form).
        pixel_range: what the model expects (``pixels.SPEC_HELP``); None: calibrate if a
            batch is given, Teachable Machine's range for its exports, else 0-255.
        calibrate_with: a labelled batch (folder, zip, tar or CSV) of the model's classes.

    Raises:
        ModelRefused: the file, names, range or calibration batch are unusable.
    """
    model = Path(model)
    with tempfile.TemporaryDirectory(prefix="refit-import-") as scratch:
        notes: list[str] = []
        if model.suffix == ".zip":
            model, found_labels = _unpack_teachable_machine(model, Path(scratch))
            labels = labels or found_labels
            notes.append(f"Teachable Machine export: {model.name} + {found_labels.name}")
            if pixel_range is None and calibrate_with is None:
                pixel_range = TEACHABLE_MACHINE_PIXELS
        if classes is None:
            if labels is None:
                raise ModelRefused(model, "give the class names (--classes or a --labels file)")
            classes, numbered = read_class_list(Path(labels))
            if numbered and pixel_range is None and calibrate_with is None:
                pixel_range = TEACHABLE_MACHINE_PIXELS
                notes.append("numbered labels.txt: Teachable Machine's pixel range -1-1 assumed")
        try:
            declared = pixels.parse(pixel_range) if pixel_range else None
        except pixels.BadContract as exc:
            raise ModelRefused(model, str(exc)) from exc
        plain = import_model(model, classes, existing)  # loaded once: pixels as the file has them
        calibration, warnings = None, []
        if calibrate_with is not None:
            name = declared.name if declared else None
            limits = limits or IngestLimits()
            calibration = calibrate(plain.model, classes, calibrate_with, limits, name, progress)
            declared, note, warning = _settle_contract(calibration, declared)
            notes += [note] if note else []
            warnings += [warning] if warning else []
        loaded = plain if declared is None else with_contract(plain, declared)
        if calibration is not None:
            loaded.card["calibration"] = {k: round(v, 4) for k, v in calibration.accuracy.items()}
        return Imported(loaded, notes, warnings, calibration)


def _settle_contract(
    calibration: pixels.Calibration, declared: pixels.PixelContract | None
) -> tuple[pixels.PixelContract, str | None, str | None]:
    """The contract after calibration: the best one when none was declared (and a note),
    else the declared one (with a warning when the labels disagree with it)."""
    if declared is None:
        note = f"pixel range {calibration.best} chosen by calibration"
        return pixels.parse(calibration.best), note, None
    return declared, None, calibration.verdict(declared.name)


def _unpack_teachable_machine(archive: Path, scratch: Path) -> tuple[Path, Path]:
    """The model and labels.txt from a Teachable Machine zip (only those two members)."""
    if not zipfile.is_zipfile(archive):
        raise ModelRefused(archive, "not a zip file")
    with zipfile.ZipFile(archive) as handle:
        members = {
            Path(info.filename).name: info for info in handle.infolist() if not info.is_dir()
        }
        if any(name.endswith("saved_model.pb") for name in members):
            from pipelines.models.safety import read_facts

            read_facts(archive)  # raises the SavedModel explanation
        missing = [name for name in TEACHABLE_MACHINE if name not in members]
        if missing:
            raise ModelRefused(
                archive,
                "a model .zip must be a Teachable Machine export holding "
                f"{' and '.join(TEACHABLE_MACHINE)} (missing {', '.join(missing)}); "
                "otherwise upload the .keras or .h5 itself",
            )
        out = []
        for name in TEACHABLE_MACHINE:
            info = members[name]
            if info.file_size > MAX_MEMBER_MB * 2**20:
                raise ModelRefused(archive, f"{name} is larger than {MAX_MEMBER_MB} MB")
            target = scratch / name
            with handle.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(target)
    return out[0], out[1]


def calibrate(
    model,
    classes: list[str],
    batch: Path,
    limits: IngestLimits,
    declared: str | None,
    progress: Progress,
) -> pixels.Calibration:
    """Run ``batch``'s images of the classes of ``model`` (a Keras model taking the pixels
    as its file had them) through it under each pixel range."""
    from pipelines.data.ingest import BatchRefused, stage_batch
    from pipelines.images.decode import load_images

    size = tuple(model.input_shape[1:3])
    with tempfile.TemporaryDirectory(prefix="refit-calibrate-") as staging:
        try:
            staged = stage_batch(Path(batch), Path(staging), limits)
        except BatchRefused as exc:
            raise ModelRefused(batch, f"calibration batch refused: {exc}") from exc
        known = [f for f in staged.files if f.label in classes]
        if not known:
            raise ModelRefused(
                batch, f"calibration batch has no images of the model's classes {classes}"
            )
        progress(f"Calibrating the pixel range on {len(known)} labelled images…")
        images = load_images(
            [staged.files_dir / f.path for f in known], [f.label for f in known], classes, size
        )
    return measure_pixel_ranges(model, images.x, images.y, declared)


def measure_pixel_ranges(model, raw, labels, declared: str | None = None) -> pixels.Calibration:
    """Which plausible contract makes ``model`` (unwrapped) agree with ``labels`` on ``raw``."""
    import numpy as np

    from pipelines.models.predict import predict_proba

    names = list(pixels.PLAUSIBLE)
    if declared and declared not in names:
        names.append(declared)
    accuracy, loss = {}, {}
    for name in names:
        probs = predict_proba(model, pixels.parse(name).apply(raw))
        accuracy[name] = float(np.mean(probs.argmax(axis=1) == labels))
        picked = probs[np.arange(len(labels)), labels]
        loss[name] = float(np.mean(-np.log(np.clip(picked, 1e-7, 1.0))))
    return pixels.Calibration(accuracy, loss, len(labels))
