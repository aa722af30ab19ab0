"""Benchmark: is the label queue worth a person's time? The loop simulated on CIFAR-10.

From the shared tarball, per class, disjoint parts: a labelled base, a pool the streams are
drawn from, and a holdout (every class). Two kinds of 9-class champion never saw ``truck``:
weak ones (``--weak`` images per class) and competent ones (``--competent`` per class),
trained here with the same small net. For each of ``--seeds`` seeds, champions are trained
with that seed (how a champion trained moves the answer as much as the stream does), a
stream is drawn from the pool (``--stream`` images per class, trucks included: 10% of it)
and answered by the champion through the real prediction log (``pipelines.loop.predlog``).
Then, for each budget, the
queue (``pipelines.loop.labelqueue.rank``, told the champion's holdout accuracy) and a
random draw of the same size are "labelled" (their truth); what intake admits of each (a
new class only with ``validation.min_images_per_new_class`` images: fewer trucks are
labels spent for nothing) fine-tunes the champion with Refit's recipe and replay, and both
are judged on the same holdout.

Prints, per champion and budget, the mean over the seeds with a 95% t-interval:
- trucks among the picks as a multiple of their share of the stream (random: 1x);
- holdout accuracy gained per 100 labels, queue and random, and their paired difference
  (the queue's gain minus random's on the same seed): where its interval holds 0, the two
  are within noise and the table says so;
- "more like these": of the 50 logged images most like 5 logged trucks, the share that are
  trucks, in the champion's features and in the ImageNet embedding, by similarity to the
  seeds and by Refit's classifier (``pipelines.loop.novelty.more_like``: the seeds against
  the champion's training sample).

Targets: trucks >= 3x random's share; accuracy gain per label >= 1.2x random's where the
intervals separate; more-like-these precision >= 0.8 with the competent champion.

Run: .venv/bin/python bench/loop.py [--seeds 10] [--budgets 50,100,200,400]  (about 60 min)
     .venv/bin/python bench/loop.py --rank-only  (the ranking's time alone)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image
from scipy import stats

from core.objectstore import Store
from core.policies import ArchitectureConfig, FinetuneConfig, TrainConfig
from core.settings import LoopConfig, get_settings
from pipelines.images.decode import ImageSet
from pipelines.loop import labelqueue, predlog
from pipelines.loop.features import TrainingFeatures, features_and_probs
from pipelines.loop.novelty import more_like
from pipelines.models.predict import accuracy, predict_proba
from pipelines.training.finetune import finetune
from pipelines.training.scratch import fit_from_scratch

NEW = "truck"
QUEUES = ("queue", "queue, ImageNet")  # the queue in the champion's features, in ImageNet's


def encode_jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def interval(values) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over the seeds."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return values.mean(), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def show(values, digits: int = 2, unit: str = "") -> str:
    mean, low, high = interval(values)
    return f"{mean:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


def subset(data: ImageSet, index: np.ndarray, classes: list[str]) -> ImageSet:
    names = np.array(data.class_names)[data.y[index]]
    return ImageSet(data.x[index], np.array([classes.index(c) for c in names]), classes)


def admitted(labelled: ImageSet, known: list[str]) -> ImageSet:
    """What intake lets through of ``labelled``: a class the champion lacks only with
    ``validation.min_images_per_new_class`` images (intake refuses fewer; in Refit "more
    like these" fills it first, here those labels are spent and teach nothing)."""
    minimum = get_settings().validation.min_images_per_new_class
    count = np.bincount(labelled.y, minlength=len(labelled.class_names))
    names = sorted(
        c for k, c in enumerate(labelled.class_names)
        if count[k] and (c in known or count[k] >= minimum)
    )  # fmt: skip
    return labelled.only(names).relabel(names)


def split(data: ImageSet, args) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per class, in the tarball's order: holdout first, then the stream pool, then the
    base the champions train on (``weak`` <= ``competent`` images of it)."""
    holdout, pool, base = [], [], {}
    for k, name in enumerate(data.class_names):
        rows = np.flatnonzero(data.y == k)
        holdout += list(rows[: args.holdout])
        pool += list(rows[args.holdout : args.holdout + args.pool])
        base[name] = rows[args.holdout + args.pool :]
    return base, np.array(holdout), np.array(pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="50,100,200,400")
    parser.add_argument("--weak", type=int, default=100, help="weak champion: images per class")
    parser.add_argument("--competent", type=int, default=1500, help="images per class")
    parser.add_argument("--stream", type=int, default=200, help="stream images per class")
    parser.add_argument("--pool", type=int, default=600, help="stream pool per class")
    parser.add_argument("--holdout", type=int, default=200, help="holdout images per class")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--champions", default="weak,competent")
    parser.add_argument("--rank-only", action="store_true", help="only time the ranking")
    args = parser.parse_args()
    if args.rank_only:
        rank_time()
        return
    budgets = [int(b) for b in args.budgets.split(",")]
    from bench.cifar import read_cifar

    started = time.perf_counter()
    per_class = args.holdout + args.pool + args.competent
    data = read_cifar(get_settings().cifar10_archive, per_class)
    print(f"read {len(data)} CIFAR-10 images in {time.perf_counter() - started:.0f} s")
    all_classes = data.class_names
    known = [c for c in all_classes if c != NEW]
    base, holdout_rows, pool = split(data, args)
    holdout = subset(data, holdout_rows, all_classes)
    pool_labels = np.array(all_classes)[data.y[pool]]
    jpeg = {int(i): encode_jpeg(data.x[i]) for i in pool}  # what clients upload
    embed = imagenet_pool(data.x[pool])

    def holdout_accuracy(model) -> float:
        """On every holdout class: a class the model lacks counts as wrong."""
        names = model.class_names
        y = np.array(
            [names.index(c) if c in names else -1 for c in np.array(all_classes)[holdout.y]]
        )
        return accuracy(predict_proba(model.model, holdout.x), y)

    tables = {}
    for kind in args.champions.split(","):
        size = args.weak if kind == "weak" else args.competent
        rows = np.concatenate([base[c][:size] for c in known])
        base_set = subset(data, rows, known)
        sample = np.sort(
            np.random.default_rng(0).choice(len(base_set), min(1000, len(base_set)), replace=False)
        )
        replay = subset(base_set, sample, known)
        embed_train = imagenet_pool(base_set.x[sample])
        result = {b: defaultdict(list) for b in budgets}
        result["like"], result["holdout"] = defaultdict(list), defaultdict(list)
        print(f"\n== {kind} champions: {len(base_set)} images each", flush=True)
        for seed in range(args.seeds):
            # each seed its own champion: how it trained moves the answer as much as the stream
            started = time.perf_counter()
            champion, _ = fit_from_scratch(
                base_set,
                ArchitectureConfig(input_size=32, widths=(32, 64, 64)),
                TrainConfig(epochs=12, batch_size=128, val_share=0.1, patience=0, seed=seed),
                progress=lambda m: None,
            )
            champion_accuracy = holdout_accuracy(champion)
            known_accuracy = accuracy(
                predict_proba(champion.model, holdout.x[holdout.y != all_classes.index(NEW)]),
                np.array([known.index(c) for c in np.array(all_classes)[holdout.y] if c != NEW]),
            )
            result["holdout"]["all"].append(champion_accuracy)
            result["holdout"]["known"].append(known_accuracy)
            print(f"  seed {seed}: champion holdout {champion_accuracy:.4f} (known classes "
                  f"{known_accuracy:.4f}), trained in {time.perf_counter() - started:.0f} s",
                  flush=True)  # fmt: skip
            probs, feats = features_and_probs(champion.model, base_set.x[sample])
            reference = TrainingFeatures(feats, base_set.y[sample], probs, known)
            config = FinetuneConfig(
                head_epochs=2, epochs=args.finetune_epochs, batch_size=64, seed=seed
            )
            rng = np.random.default_rng(seed)
            stream = np.concatenate([
                rng.choice(np.flatnonzero(pool_labels == c), args.stream, replace=False)
                for c in all_classes
            ])  # fmt: skip
            stream = rng.permutation(stream)  # positions in ``pool``
            view, by_id, feats = log_stream(champion, data.x[pool[stream]],
                                            [jpeg[int(pool[i])] for i in stream])  # fmt: skip
            share = float(np.mean(pool_labels[stream] == NEW))
            trucks = np.flatnonzero(pool_labels[stream] == NEW)
            seeds = rng.choice(trucks, 5, replace=False)
            for name, space, trained in (
                ("champion", feats, reference.features), ("imagenet", embed[stream], embed_train)
            ):  # fmt: skip
                for how, against in (("similarity", None), ("classifier", trained)):
                    found, _ = more_like(space, space[seeds], 50, exclude=seeds, known=against)
                    is_new = pool_labels[stream][found] == NEW
                    result["like"][f"{name} {how}"].append(float(np.mean(is_new)))
            order = np.array([by_id[e["id"]] for e in view.entries])  # log -> stream position
            imagenet = (embed[stream][order], embed_train)
            for budget in budgets:
                picks = {}
                for name, space in (("queue", None), ("queue, ImageNet", imagenet)):
                    items = labelqueue.rank(
                        view, reference, budget, accuracy=known_accuracy, seed=seed, space=space
                    )
                    picks[name] = np.array([by_id[item.id] for item in items])
                picks["random"] = rng.choice(len(stream), budget, replace=False)
                gains, trained = {}, []
                for name, picked in picks.items():
                    labelled = admitted(subset(data, pool[stream[picked]], all_classes), known)
                    if NEW in labelled.class_names:
                        trained.append(name)
                    challenger, _ = finetune(champion, labelled, replay, config, lambda m: None)
                    gains[name] = (
                        (holdout_accuracy(challenger) - champion_accuracy) * 100 / budget * 100
                    )
                    result[budget][name].append(gains[name])
                line = f"  seed {seed} budget {budget}:"
                for name in QUEUES:
                    result[budget][f"{name} - random"].append(gains[name] - gains["random"])
                    found = np.mean(pool_labels[stream[picks[name]]] == NEW) / share
                    result[budget][f"{name} trucks"].append(found)
                    line += f" {name}: trucks {found:.2f}x, gain {gains[name]:+.2f};"
                print(f"{line} random: gain {gains['random']:+.2f}; trucks trained: "
                      f"{' | '.join(trained) or 'none'}", flush=True)  # fmt: skip
        tables[kind] = result
    report(tables, budgets, args)


def rank_time(n: int = 10_000, budget: int = 400) -> None:
    """The queue's ranking of ``n`` logged images: 1,280-wide ImageNet embeddings of CIFAR-10
    images (each image twice, as a busy log holds near-copies), 1,000 training images."""
    from bench.cifar import read_cifar

    data = read_cifar(get_settings().cifar10_archive, 650)
    embed = imagenet_pool(data.x)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(embed) - 1000, n)
    logged = embed[1000:][rows] + rng.normal(0, 0.01, (n, embed.shape[1])).astype(np.float32)
    probs = rng.dirichlet(np.ones(9), n)
    top = np.sort(probs, axis=1)[:, ::-1]
    entries = [
        {"id": f"{i:064x}", "labels": ["x"] * 5, "probs": list(top[i, :5]),
         "margin": float(top[i, 0] - top[i, 1]), "version": "1", "image": "x.jpg"}
        for i in range(n)
    ]  # fmt: skip
    view = predlog.LogView(entries, logged)
    reference = TrainingFeatures(embed[:1000], np.zeros(1000, int), probs[:1000], ["x"] * 9)
    for champion_accuracy in (0.5, 0.9):
        started = time.perf_counter()
        items = labelqueue.rank(view, reference, budget, accuracy=champion_accuracy)
        took = time.perf_counter() - started
        mode = labelqueue.strategy(budget, 9, champion_accuracy)[0]
        print(f"ranking {n:,} logged images ({embed.shape[1]} wide), {budget} {mode} picks: "
              f"{took:.2f} s ({len(items)} picks; target < 2 s)")  # fmt: skip


def imagenet_pool(x: np.ndarray) -> np.ndarray:
    """The pool's ImageNet embedding, computed once."""
    from pipelines.models.imagenet import imagenet_embedding

    cache = Path(tempfile.gettempdir()) / "refit-bench-weights"
    embed = imagenet_embedding(cache, 32, progress=lambda m: None)  # enlarged inside
    started = time.perf_counter()
    out = np.concatenate([embed(x[i : i + 256]) for i in range(0, len(x), 256)])
    print(f"ImageNet embedding of {len(x)} images in {time.perf_counter() - started:.0f} s")
    return out


def log_stream(champion, x: np.ndarray, uploads: list[bytes]):
    """The champion answers the stream; the real prediction log records it. Returns the
    log view, image id -> position in the stream, and the features."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        writer = predlog.LogWriter(store, LoopConfig(), start=False)
        probs, feats = features_and_probs(champion.model, x)
        for start in range(0, len(x), 500):
            part = slice(start, start + 500)
            named = [(f"s{i}.jpg", d) for i, d in enumerate(uploads[part], start)]
            writer.record(named, "1", champion.class_names, probs[part], feats[part])
            while writer.flush():
                pass
        view = predlog.read_log(store)
    by_id = {predlog.image_id(d): i for i, d in enumerate(uploads)}
    return view, by_id, feats


def report(tables: dict, budgets: list[int], args) -> None:
    print(
        f"\n{args.seeds} seeds, each its own champions and stream; mean [95% t-interval]; "
        f"stream {args.stream} images per class, 10% {NEW} (unseen by both champions); "
        f"fine-tuned {args.finetune_epochs} epochs with replay; holdout accuracy over all 10 "
        "classes (the champions' mean in parentheses); gains in points per 100 labels."
    )
    for kind, result in tables.items():
        print(f"{kind} champions' holdout accuracy: {show(result['holdout']['all'], 4)}, "
              f"known classes {show(result['holdout']['known'], 4)}")  # fmt: skip
    print("\n| champion | budget | chosen by | picks | trucks vs random | gain per 100 labels "
          "| minus random's, same seed | / random's |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, result in tables.items():
        champion_accuracy = np.mean(result["holdout"]["all"])
        known_accuracy = np.mean(result["holdout"]["known"])
        for budget in budgets:
            row = result[budget]
            mode = "/".join(sorted({labelqueue.strategy(budget, 9, a)[0]
                                    for a in result["holdout"]["known"]}))  # fmt: skip
            head = f"| {kind} ({champion_accuracy:.1%}; known {known_accuracy:.1%}) | {budget}"
            print(f"{head} | random | | 1x | {show(row['random'])} | | |")
            for name in QUEUES:
                diff, low, high = interval(row[f"{name} - random"])
                verdict = "within noise" if low <= 0 <= high else ("better" if low > 0 else "worse")
                _, base_low, _ = interval(row["random"])
                base = np.mean(row["random"])  # a ratio only to a gain clear of zero
                ratio = f"{np.mean(row[name]) / base:.2f}x" if base_low > 0 else "n/a"
                print(f"{head} | {name} | {mode} | {show(row[f'{name} trucks'], unit='x')} "
                      f"| {show(row[name])} | {diff:+.2f} [{low:+.2f}, {high:+.2f}]: {verdict} "
                      f"| {ratio} |")  # fmt: skip
    print("\nMore like these: of the 50 logged images most like 5 logged trucks, the share "
          "that are trucks; by similarity to the seeds, and by Refit's classifier (the seeds "
          "against the champion's training sample).")  # fmt: skip
    print("\n| champion | champion's features: similarity | classifier "
          "| ImageNet: similarity | classifier |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for kind, result in tables.items():
        like = result["like"]
        cells = [show(like[f"{space} {how}"]) for space in ("champion", "imagenet")
                 for how in ("similarity", "classifier")]  # fmt: skip
        print(f"| {kind} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("loop"):
        main()
