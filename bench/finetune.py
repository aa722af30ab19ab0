"""Benchmark: teach the built-in 9-class model `truck` from the embedded incoming batch.

Runs the real intake (seed dataset, then the incoming batch, with DVC in a temporary git
repo), fine-tunes the built-in model with replay, and prints old-class accuracy before vs
after (forgetting), 10-class accuracy, truck recall and the fine-tuning wall time on the
fixed holdout that no model of ours trains on.
Targets: forgetting <= 2 points, truck recall >= 85%, fine-tuning <= 3 min.

Run: .venv/bin/python bench/finetune.py [--model models/builtin/model.keras]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.candidate import Baseline, assess
from pipelines.dataset import Dataset
from pipelines.intake import IntakePaths, add_batch
from pipelines.modelfile import load_refit_model
from pipelines.predict import accuracy, predict_proba
from pipelines.sample import unpack_sample
from pipelines.train import finetune_on_batch
from pipelines.versions import DvcStore


def build_dataset(settings: Settings, work: Path) -> tuple[DvcStore, str]:
    """The seed dataset plus the incoming batch, through the real intake."""
    unpack_sample(settings.sample_archive, work / "sample")
    repo = work / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    store = DvcStore(repo, repo / "data", str(work / "remote"), work / "cache", work / "versions")
    paths = IntakePaths(work / "staging", work / "quarantine", work / "batches", work / "lock")
    quiet = dict(progress=lambda m: None)
    for part in ("seed", "incoming"):
        result = add_batch(
            work / "sample" / part,
            store,
            paths,
            settings.ingest,
            settings.validation,
            settings.split,
            **quiet,
        )
        assert result.version is not None, result.report.summary()
    return store, result.report.batch_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / "models/builtin/model.keras")
    args = parser.parse_args()
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="refit-bench-ft-") as tmp:
        store, batch_id = build_dataset(settings, Path(tmp))
        dataset = Dataset.open(store.dataset_dir, store.current_version())
        champion = load_refit_model(args.model)
        challenger, results = finetune_on_batch(
            champion, dataset, batch_id, settings.finetune, progress=print
        )
        holdout = dataset.holdout_images(champion.input_size, challenger.class_names)
        report = assess(challenger, holdout, settings.gate, Baseline(champion)).summary()
        tta = accuracy(predict_proba(challenger.model, holdout.x, tta=True), holdout.y)
    seconds = sum(r.seconds for r in results)
    forgetting = report["old_class_accuracy_before"] - report["old_class_accuracy_after"]
    truck = report["new_class_recall"].get("truck", float("nan"))
    card = challenger.card
    print(
        f"\nAdd `truck` to {args.model.name}: {card['new_images']} new + "
        f"{card['replay_images']} replayed images, holdout of {report['images']} images"
    )
    print(f"{'metric':<40}{'value':>10}{'target':>12}")
    rows = [
        ("old-class accuracy before", report["old_class_accuracy_before"], ""),
        ("old-class accuracy after", report["old_class_accuracy_after"], ""),
        ("forgetting (points)", 100 * forgetting, "<= 2"),
        ("truck recall", truck, ">= 0.85"),
        ("10-class accuracy after", report["all_class_accuracy_after"], ""),
        ("10-class accuracy after, flip TTA", tta, ""),
        ("fine-tuning wall time (s)", seconds, "<= 180"),
    ]
    for name, value, target in rows:
        print(f"{name:<40}{value:>10.4f}{target:>12}")


if __name__ == "__main__":
    main()
