"""Benchmark: fine-tuning Refit's own model and models Refit did not make.

1. ``builtin``: teach the built-in 9-class model `truck` from the embedded incoming batch.
   Runs the real intake (seed dataset, then the incoming batch, with DVC in a temporary git
   repo), fine-tunes with replay, and prints old-class accuracy before vs after
   (forgetting), 10-class accuracy, truck recall and the wall time on the fixed holdout.
   Targets: forgetting <= 2 points, truck recall >= 85%, fine-tuning <= 3 min.
2. ``imported``: a no-BN CNN trained with Adam on [0, 1] inputs in Keras 2 (40 sign-like
   classes, 30x30, ``tests.userfiles``), imported, then fine-tuned on 645 new images of its
   classes: the way Refit did it before (pixels assumed 0-255, Refit's SGD recipe), Refit's
   recipe with the declared range, and the gentle recipe. Target: the challenger within
   0.5 points of the champion or better.
3. ``large``: a Teachable-Machine-shaped MobileNetV2 (224 px) learns a new class from 300
   images plus replay: the gentle recipe (frozen layers computed once) vs the same epochs
   done the naive way (full forward and backward every epoch), in the same run.
   Target: <= 3 min on 2 cores. The trunk's weights are random (nothing downloads here)
   with batch-norm statistics set from the data, so accuracies are those of random
   features; the times are the point.

Run: .venv/bin/python bench/finetune.py [--only builtin|imported|large] [--model FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.objectstore import Store
from core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.data.dataset import Dataset
from pipelines.data.intake import Intake, IntakePaths, add_batch
from pipelines.data.sample import unpack_sample
from pipelines.data.versions import DvcStore
from pipelines.judge.candidate import Baseline, assess, challenge
from pipelines.models.modelfile import load_refit_model
from pipelines.models.predict import accuracy, predict_proba


def build_dataset(settings: Settings, work: Path) -> tuple[DvcStore, str]:
    """The seed dataset plus the incoming batch, through the real intake."""
    unpack_sample(settings.sample_archive, work / "sample")
    repo = work / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    store = DvcStore(repo, repo / "data", str(work / "remote"), work / "cache", Store(str(work)))
    paths = IntakePaths(work / "staging", work / "quarantine", work / "batches", work / "lock")
    quiet = dict(progress=lambda m: None)
    for part in ("seed", "incoming"):
        intake = Intake(paths, settings.ingest, settings.validation, settings.split)
        result = add_batch(work / "sample" / part, store, intake, **quiet)
        assert result.version is not None, result.report.summary()
    return store, result.report.batch_id


def bench_builtin(args) -> None:
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="refit-bench-ft-") as tmp:
        store, batch_id = build_dataset(settings, Path(tmp))
        dataset = Dataset.open(store.dataset_dir, store.current_version())
        champion = load_refit_model(args.model)
        trial = challenge(Baseline(champion), dataset, batch_id, settings.finetune, print)
        challenger, holdout = trial.challenger, trial.holdout
        report = assess(challenger, holdout, settings.gate, trial.parent).summary()
        tta = accuracy(predict_proba(challenger.model, holdout.x, tta=True), holdout.y)
    seconds = sum(r.seconds for r in trial.fits)
    forgetting = report["old_class_accuracy_before"] - report["old_class_accuracy_after"]
    truck = report["new_class_recall"].get("truck", float("nan"))
    card = challenger.card
    print(
        f"\nAdd `truck` to {args.model.name}: {card['new_images']} new + "
        f"{card['replay_images']} replayed images, holdout of {report['images']} images"
    )
    rows = [
        ("old-class accuracy before", report["old_class_accuracy_before"], ""),
        ("old-class accuracy after", report["old_class_accuracy_after"], ""),
        ("forgetting (points)", 100 * forgetting, "<= 2"),
        ("truck recall", truck, ">= 0.85"),
        ("10-class accuracy after", report["all_class_accuracy_after"], ""),
        ("10-class accuracy after, flip TTA", tta, ""),
        ("fine-tuning wall time (s)", seconds, "<= 180"),
    ]
    _table(rows)


def _table(rows) -> None:
    print(f"{'':<52}{'value':>10}{'target':>12}")
    for name, value, target in rows:
        print(f"{name:<52}{value:>10.4f}{target:>12}")


def bench_imported(args) -> None:
    from core.policies import FinetuneConfig
    from pipelines.images.decode import ImageSet
    from pipelines.images.pixels import parse
    from pipelines.models.modelfile import import_model
    from pipelines.training.finetune import finetune
    from tests import userfiles

    names = userfiles.shape_classes()
    x, y = userfiles.shapes(8000, seed=1)
    holdout_x, holdout_y = userfiles.shapes(2000, seed=2)
    new_x, new_y = userfiles.shapes(645, seed=3)
    with tempfile.TemporaryDirectory(prefix="refit-bench-imported-") as tmp:
        path = Path(tmp) / "signs.h5"
        print("Training the user's model (Keras 2, Adam, [0, 1] inputs, no batch norm)…")
        userfiles.no_bn_cnn_h5(path, x, y, epochs=15)
        declared = import_model(path, names, contract=parse("0-1"))
        assumed = import_model(path, names, contract=parse("0-255"))
    old, new = ImageSet(x, y, names), ImageSet(new_x, new_y, names)

    def score(model) -> float:
        return accuracy(predict_proba(model, holdout_x), holdout_y)

    champion = score(declared.model)
    rows = [("champion, fed as trained (0-1)", champion, ">= 0.99")]
    runs = [
        ("before: 0-255 assumed, Refit's recipe", assumed, "refit"),
        ("pixels 0-1, Refit's recipe", declared, "refit"),
        ("pixels 0-1, gentle recipe (auto for imports)", declared, "gentle"),
    ]
    for title, start, recipe in runs:
        config = FinetuneConfig(recipe=recipe)
        tuned, fits = finetune(start, new, old, config, progress=lambda m: None)
        last = fits[-1].history.get("accuracy", [float("nan")])[-1]
        rows.append((title, score(tuned.model), ""))
        rows.append(
            ("  kept its starting weights (1 = yes)", tuned.card["kept_starting_weights"], "")
        )
        rows.append(("  its last epoch's training accuracy", last, ""))
        rows.append(("  its change vs the champion (points)", 100 * (score(tuned.model) - champion),
                     ">= -0.5" if recipe == "gentle" else ""))  # fmt: skip
        rows.append(("  its fine-tuning wall time (s)", sum(f.seconds for f in fits), ""))
    print(f"\nImported no-BN CNN, 40 classes: fine-tuned on {len(new)} new images of its "
          f"classes + replay; holdout of {len(holdout_y)}")  # fmt: skip
    _table(rows)


def bench_large(args) -> None:
    import time

    import keras
    import numpy as np

    from core.policies import FinetuneConfig
    from pipelines.images.decode import ImageSet
    from pipelines.training.finetune import finetune
    from pipelines.training.gentle import top_layers
    from pipelines.training.imports import import_user_model
    from tests import userfiles

    names = userfiles.shape_classes()[:4]
    old_x, old_y = userfiles.shapes(1200, seed=1, size=224, only=[0, 1, 2])
    new_x, _ = userfiles.shapes(300, seed=5, size=224, only=[3])
    with tempfile.TemporaryDirectory(prefix="refit-bench-large-") as tmp:
        h5, labels, _ = userfiles.teachable_machine_h5(
            Path(tmp), names[:3], size=224, images=old_x[:96]
        )
        champion = import_user_model(h5, labels=labels).loaded
    old = ImageSet(old_x, old_y, names[:3])
    new = ImageSet(new_x, np.full(len(new_x), 3), names)
    config = FinetuneConfig()
    start = time.monotonic()
    tuned, fits = finetune(champion, new, old, config, progress=print)
    cached = time.monotonic() - start
    epochs = [f.epochs_run for f in fits]
    # The same epochs the naive way: every epoch runs the whole 224 px network forward, and
    # backward through everything above the lowest trainable layer.
    from pipelines.training.surgery import grow_head

    naive = grow_head(champion, [names[3]]).model
    train = ImageSet.concat([new.relabel(names), old.relabel(names)])
    onehot = np.eye(len(names), dtype="float32")[train.y]
    start = time.monotonic()
    for phase, n_epochs in zip(("head", "top"), epochs, strict=False):
        unfrozen = top_layers(naive, config.gentle_unfreeze_layers) if phase == "top" else []
        for layer in naive.layers:
            layer.trainable = layer in unfrozen or layer.name == "logits"
        naive.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        naive.fit(train.x.astype("float32"), onehot, batch_size=32, epochs=n_epochs, verbose=0)
    full = time.monotonic() - start
    print(
        f"\n224 px MobileNetV2 0.35 (Teachable Machine's shape): learn a 4th class from "
        f"{len(new)} images + {tuned.card['replay_images']} replayed; epochs {epochs}"
    )
    _table([
        ("gentle: features computed once (s)", cached, "<= 180"),
        ("same epochs, naive: full network every epoch (s)", full, ""),
        ("speed-up (naive / cached)", full / cached, ""),
        ("validation accuracy before (new class unknown)", tuned.card["val_accuracy_before"], ""),
        ("validation accuracy after", tuned.card["val_accuracy_after"], ""),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / "models/builtin/model.keras")
    parser.add_argument("--only", choices=["builtin", "imported", "large"])
    args = parser.parse_args()
    for name, run in (("builtin", bench_builtin), ("imported", bench_imported),
                      ("large", bench_large)):  # fmt: skip
        if args.only in (None, name):
            run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("finetune"):
        main()
