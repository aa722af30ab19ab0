"""Benchmark: does the gate tell an improvement from noise? (issue 34)

All on CIFAR-10 from the shared tarball, split once (seeded) into a base training set, a
batch, and a large pool the models never train on:

- **False promotion rate.** A champion trained from scratch on the base set is fine-tuned on
  the same batch ``--seeds`` times, only the seed differing: exchangeable challengers, none
  truly better than another. Every ordered pair (one as champion, one as challenger) is
  judged on ``--draws`` random holdouts of ``--holdout`` images from the pool, by the old
  point-estimate rules (accuracy >= champion's, no class's recall down by more than 0.03)
  and by the paired gate. Target: the gate promotes <= 5% of them.
- **Power.** Champions trained on part of the base set (``--fractions``) and a challenger
  trained on all of it (the same recipe): each pair's true gain is measured on the whole
  pool, and the share of random holdouts on which the gate blesses the challenger is the
  gate's power at that gain. Target >= 80% for a gain of about 2 points on 2,000 images;
  the table also prints the smallest gain the gate detects at that size (80% power, the
  observed disagreement rate).
- **Cost** of one decision on a holdout of ``--holdout`` images. Target < 1 s.

Run: .venv/bin/python bench/gate.py  (about 20 min on 2 cores)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from core.policies import ArchitectureConfig, FinetuneConfig, GatePolicy, TrainConfig
from core.settings import get_settings
from pipelines.images.decode import ImageSet
from pipelines.judge.gate import Answers, decide
from pipelines.models.evaluate import metrics_from_probs
from pipelines.models.predict import predict_proba
from pipelines.training.finetune import finetune
from pipelines.training.scratch import fit_from_scratch

QUIET = {"progress": lambda message: None}


def split(images: ImageSet, base: int, batch: int, seed: int = 0):
    order = np.random.default_rng(seed).permutation(len(images))
    return (
        images.take(order[:base]),
        images.take(order[base : base + batch]),
        images.take(order[base + batch :]),
    )


def train(images: ImageSet, epochs: int, seed: int):
    spec = ArchitectureConfig(input_size=32, widths=(32, 64, 64))
    config = TrainConfig(epochs=epochs, batch_size=256, val_share=0.05, patience=0, seed=seed)
    model, _ = fit_from_scratch(images, spec, config, **QUIET)
    return model


def old_rules(champion: np.ndarray, challenger: np.ndarray, y: np.ndarray) -> bool:
    """The gate before issue 34: point estimates, ties pass."""
    if challenger.mean() < champion.mean():
        return False
    return all(champion[y == c].mean() - challenger[y == c].mean() <= 0.03 for c in np.unique(y))


def judge(champion_probs, challenger_probs, y, classes, policy) -> tuple[bool, bool]:
    """(old rules promote, the gate blesses) on one holdout."""
    champion_right = champion_probs.argmax(1) == y
    challenger_right = challenger_probs.argmax(1) == y
    answers = Answers(np.array(classes)[y], champion_right, challenger_right)
    decision = decide(
        metrics_from_probs(challenger_probs, y, classes),
        metrics_from_probs(champion_probs, y, classes),
        policy,
        "champion",
        answers,
    )
    return old_rules(champion_right, challenger_right, y), decision.passed


def false_promotions(args, base, batch, pool, policy) -> tuple[float, float, int]:
    champion = train(base, args.epochs, seed=0)
    # val_share 0: no never-worse check, so each seed's challenger is its own model (with
    # it, a challenger that does not beat the champion on a small split reverts to it)
    config = FinetuneConfig(
        head_epochs=1, epochs=args.finetune_epochs, time_budget_s=600, val_share=0.0
    )
    probs = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        seeded = config.model_copy(update={"seed": seed})
        tuned, _ = finetune(champion, batch, base, seeded, **QUIET)
        probs.append(predict_proba(tuned.model, pool.x))
        seconds, accuracy = time.perf_counter() - started, (probs[-1].argmax(1) == pool.y).mean()
        kept = " (kept the starting weights)" if tuned.card["kept_starting_weights"] else ""
        print(
            f"  challenger {seed}: {seconds:.0f} s, pool accuracy {accuracy:.4f}{kept}", flush=True
        )
    rng = np.random.default_rng(1)
    old = new = total = 0
    for i in range(args.seeds):
        for j in range(args.seeds):
            if i == j:
                continue
            for _ in range(args.draws):
                pick = rng.choice(len(pool), args.holdout, replace=False)
                promoted, blessed = judge(
                    probs[i][pick], probs[j][pick], pool.y[pick], pool.class_names, policy
                )
                old, new, total = old + promoted, new + blessed, total + 1
    return old / total, new / total, total


def power(args, base, pool, policy, stronger, fraction: float) -> tuple[float, float, float, list]:
    """(true gain, share blessed, smallest detectable gain, decision seconds) of the
    challenger ``stronger`` (probabilities on the pool) over a champion trained on
    ``fraction`` of the base set."""
    part = base.take(np.arange(int(len(base) * fraction)))
    weaker = predict_proba(train(part, args.epochs, seed=1).model, pool.x)
    gain = (stronger.argmax(1) == pool.y).mean() - (weaker.argmax(1) == pool.y).mean()
    rng = np.random.default_rng(2)
    blessed, seconds = 0, []
    for _ in range(args.power_draws):
        pick = rng.choice(len(pool), args.holdout, replace=False)
        started = time.perf_counter()
        blessed += judge(weaker[pick], stronger[pick], pool.y[pick], pool.class_names, policy)[1]
        seconds.append(time.perf_counter() - started)
    disagree = ((weaker.argmax(1) == pool.y) != (stronger.argmax(1) == pool.y)).mean()
    z = norm.ppf(1 - policy.alpha) + norm.ppf(0.8)
    smallest = z * math.sqrt(disagree / args.holdout)
    return gain, blessed / args.power_draws, smallest, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=get_settings().cifar10_archive)
    parser.add_argument("--base", type=int, default=10_000, help="base training images")
    parser.add_argument("--batch", type=int, default=2_000, help="the batch fine-tuned on")
    parser.add_argument("--epochs", type=int, default=10, help="epochs from scratch")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10, help="exchangeable challengers")
    parser.add_argument("--draws", type=int, default=10, help="holdouts per pair")
    parser.add_argument("--power-draws", type=int, default=200)
    parser.add_argument("--holdout", type=int, default=2_000)
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.55, 0.62, 0.7],
        help="the champions' share of the base set (power at each gain)",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"bench/gate.py needs the CIFAR-10 tarball: {args.archive} is missing")
    policy = GatePolicy(min_accuracy=0.0)  # the comparison alone: no absolute floor
    images = read_cifar(args.archive)
    base, batch, pool = split(images, args.base, args.batch)
    print(f"{len(base)} base, {len(batch)} batch, {len(pool)} pool images; gate {policy}")
    old, new, decisions = false_promotions(args, base, batch, pool, policy)
    stronger = predict_proba(train(base, args.epochs, seed=2).model, pool.x)
    powers = [power(args, base, pool, policy, stronger, f) for f in args.fractions]
    seconds = float(np.median([s for *_, times in powers for s in times]))
    print("\n| measure | old rules | paired gate | target |\n| --- | --- | --- | --- |")
    print(f"| false promotions, {args.seeds} exchangeable challengers, {decisions} decisions on "
          f"{args.holdout}-image holdouts | {old:.1%} | {new:.1%} | <= 5% |")  # fmt: skip
    for fraction, (gain, blessed, _, _) in zip(args.fractions, powers, strict=True):
        print(f"| power, true gain {gain * 100:+.2f} pts (champion on {fraction:.0%} of the base "
              f"set; pool of {len(pool)}) | | {blessed:.1%} | >= 80% at ~2 pts |")  # fmt: skip
    gain, _, smallest, _ = min(powers, key=lambda p: abs(p[0] - 0.02))  # the pair nearest 2 pts
    print(f"| smallest gain detected at 80% power, {args.holdout} images (at the disagreement "
          f"rate of the {gain * 100:+.2f}-pt pair) | | "
          f"{smallest * 100:.2f} pts | |")  # fmt: skip
    print(f"| cost of one decision, {args.holdout} images (median) | | {seconds * 1000:.0f} ms "
          f"| < 1 s |")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cifar import read_cifar
    from bench.results import recorded

    with recorded("gate"):
        main()
