"""Benchmark: the retrain flow end to end on the live platform, and its orchestration overhead.

Starts a fresh platform (`refit up`: MLflow, Prefect, serving, runner) in a temp workspace
with a temp DVC repo, makes the built-in model champion (bootstrap flow, not timed), then
submits the embedded incoming batch (1,004 images, brings `truck`) and times submit -> new
champion answering on the endpoint, with each step's share (from Prefect's task runs).
Then, on a second fresh platform, the same steps as plain function calls in this process.

Targets: submit -> new champion answering <= 3 min; flow wall time <= 1.10x plain calls.
Run: .venv/bin/python bench/pipeline.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REFIT = str(Path(sys.executable).parent / "refit")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def platform(root: Path) -> dict[str, str]:
    """Start a fresh platform; export its settings into this process too."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = {
        "REFIT_WORKSPACE": str(root / "workspace"),
        "REFIT_DVC_REPO": str(repo),
        "REFIT_CONFIG": str(root / "refit.toml"),
        **{f"REFIT_{n}_PORT": str(free_port()) for n in ("MLFLOW", "PREFECT", "SERVING", "RUNNER")},
    }
    os.environ.update(env)
    from core.settings import apply_tool_environment, get_settings

    get_settings.cache_clear()
    get_settings()
    subprocess.run([REFIT, "up"], check=True, capture_output=True)
    apply_tool_environment(get_settings())  # with the Prefect credential `refit up` made
    return env


def bootstrap() -> None:
    from core import runs

    final = runs.follow(runs.start("bootstrap/bootstrap"), lambda v: None, timeout_s=900)
    assert final.state == "COMPLETED", final.message


def served_version(url: str) -> str | None:
    model = httpx.get(f"{url}/model", timeout=30).json()["model"]
    return model and model["version"]


def timed_flow() -> tuple[float, float, list[dict]]:
    """(submit -> new champion answering, flow run wall time, steps)."""
    from core import runs
    from core.settings import get_settings
    from pipelines.data.submissions import Queue

    settings = get_settings()
    before = served_version(settings.serving_url)
    started = time.perf_counter()
    submission = Queue.of(settings).submit(settings.workspace / "sample" / "incoming")
    while served_version(settings.serving_url) == before:
        time.sleep(0.25)
    answered = time.perf_counter() - started
    run_id = runs.find_submission_run(submission.id)
    final = runs.follow(run_id, lambda v: None, timeout_s=600)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_id))
    return answered, run.total_run_time.total_seconds(), final.steps


def plain_calls() -> tuple[float, dict[str, float]]:
    """The flow's steps as plain function calls (no Prefect run), timed."""
    from core.settings import get_settings
    from flows import common, retrain
    from pipelines.data.submissions import Queue

    settings = get_settings()
    submission = Queue.of(settings).submit(settings.workspace / "sample" / "incoming")
    shares: dict[str, float] = {}

    def step(name, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        shares[name] = time.perf_counter() - started
        return result

    started = time.perf_counter()
    merged = step("validate and merge", retrain.validate_and_merge.fn, submission)
    trial = step("fine-tune", retrain.finetune.fn, merged.version.batch_id, None)
    judgement = step("judge and promote", retrain.judge_and_promote.fn, submission, trial, {})
    if not judgement.promoted:  # as the flow does: nothing to reload
        print(f"not promoted: {judgement.decision.reasons} {judgement.note}", file=sys.stderr)
        return time.perf_counter() - started, shares
    step("reload serving", common.reload_serving.fn, judgement.version)
    step("smoke check", common.smoke_check.fn, judgement.version, trial.challenger, trial.dataset)
    return time.perf_counter() - started, shares


def stop() -> None:
    subprocess.run([REFIT, "down"], check=True, capture_output=True)


def phase(name: str) -> None:
    """One measurement on its own fresh platform, printed as JSON (Prefect's client keeps
    the API URL of the first platform it saw, so each phase runs in its own process)."""
    platform(Path(tempfile.mkdtemp(prefix=f"refit-bench-pipeline-{name}-")))
    try:
        bootstrap()
        if name == "flow":
            answered, seconds, steps = timed_flow()
            result = {"answered": answered, "seconds": seconds, "steps": steps}
        else:
            seconds, shares = plain_calls()
            result = {"seconds": seconds, "shares": shares}
    finally:
        stop()
    print("RESULT " + json.dumps(result))


def run_phase(name: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", name], capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"phase {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--phase":
        return phase(sys.argv[2])
    flow, plain = run_phase("flow"), run_phase("plain")
    answered = flow["answered"]
    print(f"\nSubmit 1,004 images -> new champion answering: {answered:.1f} s (target <= 180 s)")
    print(f"{'step':24} {'flow s':>8} {'share':>7} {'plain s':>8}")
    total = sum(s["seconds"] or 0 for s in flow["steps"])
    for s in flow["steps"]:
        seconds = s["seconds"] or 0
        same = plain["shares"].get(s["name"])
        print(
            f"{s['name']:24} {seconds:8.1f} {seconds / total:7.1%} "
            f"{'' if same is None else f'{same:8.1f}'}"
        )
    print(
        f"\nRetrain flow run {flow['seconds']:.1f} s vs the same steps as plain calls "
        f"{plain['seconds']:.1f} s: {flow['seconds'] / plain['seconds']:.3f}x (target <= 1.10x)"
    )


if __name__ == "__main__":
    if "--phase" in sys.argv:  # one measurement, in its own process: recorded by main()
        sys.exit(main())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("pipeline"):
        main()
