"""Benchmark: Refit for a team (network namespaces, tests/team_topology.py) against `refit
up` on one host, measured in the same run, on the same tiny user model and batch.

- submit -> new champion answering: from `refit data submit` until the public serving URL
  (nginx in front of two replicas; the local server on one host) answers with the new
  version. Both platforms are up at once and take the same batches in turns (who goes first
  alternates), so a host whose speed drifts during the run weighs on both alike; the mean of
  ``--rounds`` batches (the first brings a new class). Target: team <= 1.2x one host.
- serving throughput: 16 clients sending single 32x32 JPEGs, to two replicas behind nginx
  vs one replica directly, ``--pairs`` windows of ``--seconds`` each in turns after a warm-up
  (the means; short windows in turns, so the host's drift weighs on both alike), then one
  replica behind nginx, to tell the proxy's cost from the split's.
  Target: >= 0.9x (two cores cap any gain here); req/s, p50, p99.

Needs root (namespaces) and nginx.
Run: .venv/bin/python bench/team.py [--rounds 4] [--seconds 8] [--pairs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
from PIL import Image

from bench.serve import hammer
from tests.conftest import write_class_folders
from tests.live_platform import COLOURS, start_platform, tiny_model_file
from tests.team_topology import start_team, unavailable


def served(url: str) -> str | None:
    try:
        return httpx.get(f"{url}/model", timeout=10).json()["model"]["version"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def wait(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def bootstrap(model: Path, seed: Path) -> None:
    from core import runs

    final = runs.follow(
        runs.start("bootstrap/bootstrap", {"model": str(model), "seed": str(seed)}),
        lambda view: None,
        timeout_s=600,
    )
    if final.state != "COMPLETED":
        raise RuntimeError(f"bootstrap: {final.message}")


STEPS: dict[str, dict[str, list[float]]] = {}  # topology -> step -> seconds


def submit_to_answer(submit, public_url: str, topology: str) -> float:
    """Seconds from submitting until the public URL answers with a new version; the run's
    steps are kept in STEPS."""
    from core import runs

    before = served(public_url)
    started = time.perf_counter()
    done = submit()
    if "Submitted" not in done.stdout:
        raise RuntimeError(done.stdout + done.stderr)
    wait(lambda: served(public_url) not in (None, before), 900, "the new champion", poll=0.25)
    elapsed = time.perf_counter() - started
    submission = done.stdout.split("Submitted", 1)[1].split()[0].rstrip(";:.")
    view = runs.follow(runs.find_submission_run(submission), lambda v: None, timeout_s=300)
    steps = STEPS.setdefault(topology, {})
    for step in view.steps:
        steps.setdefault(step["name"], []).append(step["seconds"] or 0.0)
    steps.setdefault("(run total)", []).append(runs_total(view.id))
    return elapsed


def runs_total(run_id: str) -> float:
    import uuid

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id)).total_run_time.total_seconds()


def print_steps() -> None:
    print("\nretrain run steps, mean seconds")
    print(f"{'step':<28}" + "".join(f"{t:>12}" for t in STEPS))
    for name in dict.fromkeys(n for steps in STEPS.values() for n in steps):
        cells = [np.mean(STEPS[t][name]) if name in STEPS[t] else 0.0 for t in STEPS]
        print(f"{name:<28}" + "".join(f"{c:>12.1f}" for c in cells))


def jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def load(url: str, seconds: float) -> tuple[float, float, float, int]:
    rate, latencies, errors, _ = asyncio.run(
        hammer(f"{url}/predict", jpegs(64), clients=16, seconds=seconds)
    )
    return rate, np.percentile(latencies, 50) * 1e3, np.percentile(latencies, 99) * 1e3, len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="batches each topology takes")
    parser.add_argument("--seconds", type=float, default=8, help="one load window")
    parser.add_argument("--pairs", type=int, default=5, help="load windows each way, in turns")
    args = parser.parse_args()
    if why := unavailable():
        sys.exit(f"bench/team.py {why}")
    import psutil

    root = Path(tempfile.mkdtemp(prefix="refit-bench-team-"))
    model = tiny_model_file(root / "user-model.keras")
    seed = write_class_folders(root / "seed", {c: 30 for c in COLOURS[:3]}, seed=1)
    batches = [write_class_folders(root / "new-class", {c: 14 for c in COLOURS}, seed=3)] + [
        write_class_folders(root / f"more-{i}", {c: 8 for c in COLOURS}, seed=3 + i)
        for i in range(1, args.rounds)
    ]
    times: dict[str, list[float]] = {"one host": [], "team": []}

    print("one host: refit up …", flush=True)
    local = start_platform(root / "local")
    team = None
    try:
        local.run_env()
        bootstrap(model, seed)
        wait(lambda: served(local.serving_url), 120, "the local champion")
        print("team: namespaces, Postgres, S3, MLflow, Prefect, 2 workers, 2 replicas …")
        team = start_team(root / "team")
        with team.client():
            bootstrap(model, seed)
            wait(lambda: served(team.lb_url), 120, "the team's champion")
        idle = psutil.cpu_percent(interval=20)  # both platforms up, neither working

        def one_host(batch: Path) -> float:
            submit = lambda: local.refit("data", "submit", str(batch), "--no-follow")  # noqa: E731
            return submit_to_answer(submit, local.serving_url, "one host")

        def on_team(batch: Path) -> float:
            submit = lambda: team.refit("s1", "data", "submit", str(batch), "--no-follow")  # noqa: E731
            with team.client():
                return submit_to_answer(submit, team.lb_url, "team")

        for i, batch in enumerate(batches):
            turns = [("one host", one_host), ("team", on_team)][:: 1 if i % 2 == 0 else -1]
            for name, take in turns:
                times[name].append(take(batch))
            print(f"round {i + 1}: one host {times['one host'][-1]:.1f} s, "
                  f"team {times['team'][-1]:.1f} s", flush=True)  # fmt: skip
        local.refit("down")  # the throughput runs on the team alone
        local = None
        urls = {"lb": team.lb_url, "direct": team.replica_url("s1")}
        for url in urls.values():  # warm: every replica has run
            load(url, 3)
        takes: dict[str, list] = {key: [] for key in urls}
        for i in range(args.pairs):  # in turns, who goes first alternating, as above
            for key in list(urls)[:: 1 if i % 2 == 0 else -1]:
                takes[key].append(load(urls[key], args.seconds))
        pairs = [lb[0] / d[0] for lb, d in zip(takes["lb"], takes["direct"], strict=True)]
        behind_lb, direct = (tuple(np.mean(takes[key], axis=0)) for key in urls)
        team.refit("s2", "down")  # nginx now sends everything to s1
        one_behind_lb = tuple(np.mean([load(team.lb_url, args.seconds) for _ in range(2)], axis=0))
    finally:
        if local is not None:
            local.refit("down")
        if team is not None:
            team.stop()

    one, many = np.mean(times["one host"]), np.mean(times["team"])
    print(f"\nsubmit -> new champion answering (same model, same batches, {args.rounds} rounds)")
    print(f"(both platforms up at once; the host's CPU while both were idle: {idle:.0f}%)")
    print(f"{'topology':<34}{'mean s':>8}{'ratio':>8}   per round")
    print(f"{'refit up, one host':<34}{one:>8.1f}{1:>8.2f}   "
          + " ".join(f"{t:.1f}" for t in times["one host"]))  # fmt: skip
    print(f"{'team (namespaces, S3, Postgres)':<34}{many:>8.1f}{many / one:>8.2f}   "
          + " ".join(f"{t:.1f}" for t in times["team"]))  # fmt: skip
    rounds = [t / o for t, o in zip(times["team"], times["one host"], strict=True)]
    print(f"per-round ratios: {' '.join(f'{r:.2f}' for r in rounds)}")
    print(f"target: team <= 1.2x one host: {'met' if many <= 1.2 * one else 'NOT met'}")
    print_steps()
    print(f"\nserving, 16 clients, single 32x32 JPEGs, {args.pairs} windows of "
          f"{args.seconds:.0f} s each way in turns (the means)")  # fmt: skip
    print(f"{'':<34}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'ratio':>8}")
    for name, (rate, p50, p99, errors) in (
        ("one replica, direct", direct),
        ("one replica behind nginx", one_behind_lb),
        ("two replicas behind nginx", behind_lb),
    ):
        print(f"{name:<34}{rate:>8.1f}{p50:>9.1f}{p99:>9.1f}{errors:>8.0f}{rate / direct[0]:>8.2f}")
    ratio = behind_lb[0] / direct[0]
    print(f"per-pair ratios (two behind nginx / direct): {' '.join(f'{r:.2f}' for r in pairs)}")
    print(f"target: >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("team"):
        main()
