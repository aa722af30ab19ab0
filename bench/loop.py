"""Benchmark: is the label queue worth a person's time? The loop simulated on CIFAR-10.

From the shared tarball, per class, disjoint splits: a small labelled base, an unlabelled
stream and a holdout. A weak champion is trained on the base (in the ``new-class`` scenario
it never saw ``truck``; the stream and the holdout have it). The champion answers the
stream through the real prediction log (``pipelines.loop.predlog``: the same entries serving
writes, features from the same call). Then N images are "labelled" (their known truth),
chosen by the label queue (``pipelines.loop.labelqueue``) or at random (several draws), the
champion is fine-tuned on each choice with the same recipe and replay, and every challenger
is judged on the same holdout.

Prints, per scenario: accuracy on the holdout, the gain over the champion and the gain per
100 labelled images, for the queue and for random choices (mean of the draws and their
range), and says plainly whether the queue beat random.

Run: .venv/bin/python bench/loop.py [--labels 200] [--draws 3] [--scenario both]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

from core.objectstore import Store
from core.policies import ArchitectureConfig, FinetuneConfig, TrainConfig
from core.settings import LoopConfig, get_settings
from pipelines.images.decode import ImageSet
from pipelines.loop import labelqueue, predlog
from pipelines.loop.features import TrainingFeatures, features_and_probs
from pipelines.models.predict import accuracy, predict_proba
from pipelines.training.finetune import finetune
from pipelines.training.scratch import fit_from_scratch


def read_cifar(archive: Path, per_class: int) -> dict[str, list[tuple[np.ndarray, bytes]]]:
    """The first ``per_class`` images of each class: (pixels, JPEG bytes)."""
    found: dict[str, list] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            label = member.name.split("/")[-2]
            if len(found.setdefault(label, [])) >= per_class:
                continue
            data = tar.extractfile(member).read()
            found[label].append((np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data))
    return found


def image_set(rows: list[tuple[np.ndarray, str]], classes: list[str]) -> ImageSet:
    return ImageSet(
        np.stack([x for x, _ in rows]), np.array([classes.index(c) for _, c in rows]), classes
    )


def scenario(name: str, data: dict, args) -> dict:
    all_classes = sorted(data)
    known = [c for c in all_classes if c != "truck"] if name == "new-class" else all_classes
    base, stream, holdout = [], [], []
    for label in all_classes:
        rows = data[label]
        start = 0
        if label in known:
            base += [(x, label) for x, _ in rows[: args.base]]
            start = args.base
        stream += [(x, d, label) for x, d in rows[start : start + args.stream]]
        holdout += [
            (x, label) for x, _ in rows[start + args.stream : start + args.stream + args.holdout]
        ]
    order = np.random.default_rng(0).permutation(len(stream))  # a stream mixes its classes
    stream = [stream[i] for i in order]
    base_set = image_set(base, known)
    holdout_set = image_set(holdout, all_classes)
    print(
        f"\n== {name}: champion on {len(base_set)} images of {len(known)} classes; stream "
        f"{len(stream)}; holdout {len(holdout_set)} ({len(all_classes)} classes)"
    )

    started = time.perf_counter()
    champion, _ = fit_from_scratch(
        base_set,
        ArchitectureConfig(input_size=32, widths=(32, 64, 64)),
        TrainConfig(epochs=args.epochs, batch_size=128, val_share=0.1, patience=0),
        progress=lambda m: None,
    )
    print(f"champion trained in {time.perf_counter() - started:.0f} s")

    def holdout_accuracy(model) -> float:
        """On every holdout class: images of a class the model lacks count as wrong."""
        names = model.class_names
        y = np.array(
            [names.index(c) if c in names else -1 for c in np.array(all_classes)[holdout_set.y]]
        )
        return accuracy(predict_proba(model.model, holdout_set.x), y)

    base_accuracy = holdout_accuracy(champion)

    # the champion answers the stream; the real prediction log records it
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        writer = predlog.LogWriter(store, LoopConfig(), start=False)
        sx = np.stack([x for x, _, _ in stream])
        probs, feats = features_and_probs(champion.model, sx)
        for start in range(0, len(stream), 500):  # as requests arrive: the writer keeps up
            part = slice(start, start + 500)
            uploads = [(f"s{i}.jpg", d) for i, (_, d, _) in enumerate(stream[part], start)]
            writer.record(uploads, "1", champion.class_names, probs[part], feats[part])
            while writer.flush():
                pass
        assert writer.stats.dropped == 0
        view = predlog.read_log(store)
        truth = {predlog.image_id(d): (x, label) for x, d, label in stream}
        base_probs, base_feats = features_and_probs(champion.model, base_set.x)
        reference = TrainingFeatures(base_feats, base_set.y, base_probs, known)
        started = time.perf_counter()
        queued = [truth[item.id] for item in labelqueue.rank(view, reference, args.labels)]
        rank_s = time.perf_counter() - started

    config = FinetuneConfig(
        head_epochs=2,
        epochs=args.finetune_epochs,
        batch_size=64,
        lr=args.lr,
        head_lr=args.lr,
        unfreeze_layers=args.unfreeze,
    )
    choices = {"queue": queued}
    for draw in range(args.draws):
        picked = np.random.default_rng(draw).choice(len(stream), args.labels, replace=False)
        choices[f"random {draw + 1}"] = [(stream[i][0], stream[i][2]) for i in picked]
    results = {}
    for label, rows in choices.items():
        names = sorted({c for _, c in rows})
        challenger, _ = finetune(champion, image_set(rows, names), base_set, config, lambda m: None)
        kept = challenger.card["kept_starting_weights"]
        results[label] = (holdout_accuracy(challenger), sum(c == "truck" for _, c in rows))
        if "truck" in challenger.class_names:
            is_truck = np.array(all_classes)[holdout_set.y] == "truck"
            guessed = predict_proba(challenger.model, holdout_set.x[is_truck]).argmax(1)
            recall = float(np.mean(guessed == challenger.class_names.index("truck")))
            print(f"  truck recall {recall:.2f}")
        card = challenger.card
        note = f" (validation {card['val_accuracy_before']} -> {card['val_accuracy_after']}"
        note += ": the starting weights were kept)" if kept else ")"
        print(f"  fine-tuned on {label}: {results[label][0]:.4f}{note}", flush=True)
    return {
        "name": name,
        "champion": base_accuracy,
        "results": results,
        "rank_s": rank_s,
        "log": len(view),
    }


def report(outcome: dict, labels: int) -> None:
    base = outcome["champion"]
    rows = outcome["results"]
    print(f"\n### {outcome['name']} (champion {base:.4f} on the holdout; queue ranked "
          f"{outcome['log']} logged images in {outcome['rank_s']:.2f} s)")  # fmt: skip
    print(
        "| chosen by | labels | trucks among them | holdout accuracy | gain | gain per 100 labels |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for label, (acc, trucks) in rows.items():
        gain = acc - base
        print(f"| {label} | {labels} | {trucks} | {acc:.4f} | {gain * 100:+.2f} pts | "
              f"{gain * 100 / labels * 100:+.2f} pts |")  # fmt: skip
    queue = rows["queue"][0] - base
    randoms = [acc - base for key, (acc, _) in rows.items() if key != "queue"]
    mean = statistics.mean(randoms)
    ratio = f"{queue / mean:.2f}x" if mean > 0 else "n/a"
    print(f"| random, mean of {len(randoms)} | {labels} | | {base + mean:.4f} | "
          f"{mean * 100:+.2f} pts (range {min(randoms) * 100:+.2f} to {max(randoms) * 100:+.2f}) | "
          f"{mean * 100 / labels * 100:+.2f} pts |")  # fmt: skip
    verdict = (
        "beat" if queue > max(randoms) else ("matched" if queue >= min(randoms) else "did NOT beat")
    )
    print(f"\nThe queue {verdict} random choice: {queue * 100:+.2f} pts vs {mean * 100:+.2f} pts "
          f"on average ({ratio} the gain per labelled image).")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=200, help="images labelled per choice")
    parser.add_argument("--draws", type=int, default=3, help="random choices to average")
    parser.add_argument("--base", type=int, default=150, help="labelled images per class")
    parser.add_argument("--stream", type=int, default=400, help="stream images per class")
    parser.add_argument("--holdout", type=int, default=200, help="holdout images per class")
    parser.add_argument("--epochs", type=int, default=10, help="champion training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05, help="fine-tune peak learning rate")
    parser.add_argument("--unfreeze", type=int, default=3, help="top layers fine-tuned (-1: all)")
    parser.add_argument("--scenario", choices=["known", "new-class", "both"], default="both")
    args = parser.parse_args()
    started = time.perf_counter()
    data = read_cifar(get_settings().cifar10_archive, args.base + args.stream + args.holdout)
    total = sum(len(v) for v in data.values())
    print(f"read {total} CIFAR-10 images in {time.perf_counter() - started:.0f} s")
    names = ["known", "new-class"] if args.scenario == "both" else [args.scenario]
    outcomes = [scenario(name, data, args) for name in names]
    for outcome in outcomes:
        report(outcome, args.labels)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("loop"):
        main()
