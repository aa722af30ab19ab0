"""The fault matrix: real servers on tiny data, broken at every step a crash can hit.

Runs are killed with SIGKILL at failpoints (``core.faults``: the drill file the live
platform's ``REFIT_FAILPOINTS`` names), MLflow is killed during register, the DVC remote
turns read-only during push and the dataset's disk fills up during a merge. After each,
:func:`check_invariants` says what must hold after any crash; the next run must finish the
work exactly once. Nothing here synchronises by sleeping: the tests wait for files and
states the platform writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from core import runs
from tests.e2e.test_orchestration import outcome, submit
from tests.live_platform import (
    COLOURS,
    RUN_TIMEOUT_S,
    SETTLE_S,
    LivePlatform,
    ensure_champion,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Where each kill leaves the submission, and whether the champion has moved by then. The
# other failpoints are broken elsewhere: the merge's (`merge.swapped`, `merge.versioned` and
# four more kill points) in tests/e2e/test_data_versions.py, `merged` (killed while
# training) in test_orchestration.py and test_team.py; `judged` leaves the state `live` does.
KILLS = {
    "registered": ("merged", False),  # registered: resumed at promotion, never retrained
    "promote.intent": ("merged", False),  # the intent is dropped; promotion is redone
    "live": ("judged", True),  # serving reloads again; nothing else is repeated
}


def _registry(live: LivePlatform):
    from mlflow import MlflowClient

    url = f"http://127.0.0.1:{live.env['REFIT_MLFLOW_PORT']}"
    return MlflowClient(url, url)


def _tracked_processes(live: LivePlatform) -> set[int]:
    """The servers' process trees, this test process's and its children."""
    roots = [os.getpid()]
    for record in (live.workspace / "run").glob("*.pid"):
        roots.append(json.loads(record.read_text())["pid"])
    known = set()
    for pid in roots:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        known |= {root.pid, *(child.pid for child in root.children(recursive=True))}
    return known


def orphans(live: LivePlatform) -> list[str]:
    """Processes of this workspace that no server (nor this test) owns."""
    known, found = _tracked_processes(live), []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            ours = process.environ().get("REFIT_WORKSPACE") == str(live.workspace)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if ours and process.pid not in known and process.status() != psutil.STATUS_ZOMBIE:
            found.append(f"{process.pid}: {' '.join(process.info['cmdline'] or [])[:120]}")
    return found


def check_invariants(live: LivePlatform, submission: str | None = None) -> None:
    """What must hold after any crash, before or after the next run finished the work."""
    from core.contract import (
        CHAMPION,
        GATE_TAG,
        HISTORY_PREFIX,
        PENDING_MOVE_TAG,
        PREVIOUS,
        SUBMISSION_TAG,
    )
    from pipelines.data.dataset import class_counts, load_index

    client, name = _registry(live), "refit-classifier"
    model = client.get_registered_model(name)
    assert PENDING_MOVE_TAG not in model.tags, "an alias move was left half-done"
    history = [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(HISTORY_PREFIX)]
    assert history, "no promotion recorded"
    last = history[-1]
    assert model.aliases.get(CHAMPION) == last["version"], "the champion is not the last move"
    if last["from_version"] is not None:
        assert model.aliases.get(PREVIOUS) == last["from_version"], "previous is not the one before"
    for move in history:
        if move["action"] == "promote":
            tags = client.get_model_version(name, move["version"]).tags
            assert tags.get(GATE_TAG) == "passed", f"v{move['version']} moved without the gate"
    if submission is not None:
        for_it = client.search_model_versions(f"name='{name}'")
        registered = [v.version for v in for_it if v.tags.get(SUBMISSION_TAG) == submission]
        assert len(registered) <= 1, f"{submission} was registered {len(registered)} times"
        promotions = [m for m in history if m["version"] in registered]
        assert len(promotions) <= 1, f"{submission} was promoted {len(promotions)} times"

    # data/ is the recorded version data.dvc names, with nothing half-merged beside it.
    repo = Path(live.env["REFIT_DVC_REPO"])
    log = [
        json.loads(line)
        for line in (live.workspace / "dataset-versions" / "versions.jsonl")
        .read_text()
        .splitlines()
    ]
    pointer = (repo / "data.dvc").read_text()
    assert last_md5(pointer) == log[-1]["version"], "data.dvc is not the last recorded version"
    index = load_index(repo / "data")
    assert class_counts(index) == log[-1]["counts"], "data/ is not the recorded version"
    on_disk = sum(1 for p in (repo / "data").rglob("*") if p.is_file() and p.name != "index.csv")
    assert on_disk == log[-1]["files"] == len(index)
    assert not list(repo.glob(".data.*")), "a merge left its work beside the dataset"
    batches = [v["batch_id"] for v in log]
    assert len(batches) == len(set(batches)), "a batch was versioned twice"
    staging = live.workspace / "staging"
    assert not (staging.is_dir() and any(staging.iterdir())), "staging was not swept"

    if submission is not None:  # its state agrees with the registry and the version log
        state = outcome(live, submission)
        found = _state(live, submission)
        if state["status"] in ("merged", "judged"):
            assert found["batch_id"] in batches
        if state["status"] == "judged":
            assert client.get_model_version(name, found["version"])
        if state["status"] != "done":  # `refit status` tells the truth about it
            status = live.refit("status").stdout
            assert submission in status and state["status"] in status, status
    assert not orphans(live), orphans(live)


def last_md5(dvc_file: str) -> str:
    import yaml

    return yaml.safe_load(dvc_file)["outs"][0]["md5"]


def _state(live: LivePlatform, submission: str) -> dict:
    found = live.queue().find(submission)
    if found is None:
        raise AssertionError(f"no state for {submission}")
    return found.state()


def arm(live: LivePlatform, *steps: str) -> Path:
    """Write the drill (``<failpoint> <action>`` lines); returns the drill file."""
    drill = Path(live.env["REFIT_FAILPOINTS"])
    drill.write_text("".join(f"{step}\n" for step in steps))
    return drill


def reached(drill: Path, failpoint: str) -> Path:
    """The file a paused run writes at ``failpoint`` (remove it to let the run go on)."""
    return drill.with_name(f"{drill.name}.{failpoint}.reached")


def server_pid(live: LivePlatform, name: str) -> int:
    return json.loads((live.workspace / "run" / f"{name}.pid").read_text())["pid"]


def test_a_run_killed_at_every_step_finishes_the_work_exactly_once(live) -> None:
    """One submission; its run is killed at each failpoint in turn. The run after each kill
    pauses before it takes anything (after recovering what the killed one left): there the
    invariants are checked, and the state the kill left."""
    before = ensure_champion(live)
    drill = arm(live, *(step for point in KILLS for step in (f"{point} kill", "take pause")))
    held = reached(drill, "take")
    versions = len(live.dataset_versions())
    submission = submit(live, live.batch("drilled", COLOURS[:3], 8, seed=11))
    try:
        for point, (status, moved) in KILLS.items():
            wait_for(held.exists, 300, f"the run after the kill at {point}", poll=0.2)
            assert outcome(live, submission)["status"] == status, point
            assert (live.champion() != before) == moved, point
            check_invariants(live, submission)
            held.unlink()
        wait_for(lambda: outcome(live, submission)["status"] == "done", 300, "the last run")
    finally:
        drill.unlink(missing_ok=True)
        held.unlink(missing_ok=True)
    assert outcome(live, submission)["outcome"] == "promoted"
    check_invariants(live, submission)
    assert len(live.dataset_versions()) == versions + 1
    champion = live.champion()
    previous = _registry(live).get_model_version_by_alias("refit-classifier", "previous")
    assert previous.version == before
    wait_for(lambda: live.served_version() == champion, SETTLE_S, f"serving v{champion}")
    view = runs.view(runs.find_submission_run(submission))
    assert view.report and "Resumed" in view.report and "Live check" in view.report, view


def _kill_tree(pid: int) -> None:
    process = psutil.Process(pid)
    family = [process, *process.children(recursive=True)]
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=30)


def test_mlflow_killed_during_register_leaves_no_run_running(live) -> None:
    """MLflow dies after the challenger's run started: the run fails, the champion stays,
    and once MLflow is back the abandoned MLflow run is ended and the work done once."""
    champion = ensure_champion(live)
    drill = arm(live, "register pause")
    held = reached(drill, "register")
    submission = submit(live, live.batch("mlflow-dies", COLOURS[:3], 8, seed=12))
    try:
        wait_for(held.exists, 300, "the run to reach register", poll=0.2)
        _kill_tree(server_pid(live, "mlflow"))
        held.unlink()
        run_id = runs.find_submission_run(submission)
        final = runs.follow(run_id, lambda view: None, timeout_s=RUN_TIMEOUT_S)
        assert final.state == "FAILED"
        assert "MLflow" in final.message or "judge" in final.message, final.message
    finally:
        drill.unlink(missing_ok=True)
        held.unlink(missing_ok=True)
        assert live.refit("up", timeout=300).returncode == 0
    assert live.champion() == champion
    wait_for(lambda: outcome(live, submission)["status"] == "done", 300, "the retried run")
    assert outcome(live, submission)["outcome"] == "promoted"
    client = _registry(live)
    experiment = client.get_experiment_by_name("refit-classifier").experiment_id
    still = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert not still, [r.info.run_name for r in still]
    killed = client.search_runs([experiment], "attributes.status = 'KILLED'")
    assert any(r.data.tags.get("submission") == submission for r in killed)
    check_invariants(live, submission)


@pytest.fixture
def read_only(tmp_path):
    """Make a directory read-only for everyone, root included (a read-only bind mount)."""
    mounted: list[Path] = []

    def make(path: Path) -> None:
        for args in (["--bind", str(path), str(path)], ["-o", "remount,bind,ro", str(path)]):
            done = subprocess.run(["mount", *args], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root")
        mounted.append(path)

    yield make
    for path in mounted:
        if _mounted(path):
            subprocess.run(["umount", str(path)], check=True)


def _mounted(path: Path) -> bool:
    """Whether something is mounted at ``path`` (a bind mount too, which ismount misses)."""
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in mounts)


def test_an_unwritable_dvc_remote_during_push_changes_nothing(live, read_only) -> None:
    """The remote turns read-only between the merge and `dvc push`: the run fails naming
    the push, the dataset is as it was; the retry (held until the remote is writable
    again, so the check sees no run at work) goes through."""
    ensure_champion(live)
    versions, champion = live.dataset_versions(), live.champion()
    remote = live.workspace / "dvc-remote"
    drill = arm(live, "merge.swapped pause", "take pause")
    merging, retry = reached(drill, "merge.swapped"), reached(drill, "take")
    submission = submit(live, live.batch("remote-ro", COLOURS[:3], 8, seed=13))
    try:
        wait_for(merging.exists, 300, "the merge", poll=0.2)
        read_only(remote)
        merging.unlink()
        final = runs.follow(runs.find_submission_run(submission), lambda view: None, 300)
        assert final.state == "FAILED" and "dvc push" in final.message, final.message
        assert "Read-only file system" in final.message, final.message  # DVC's own words
        wait_for(retry.exists, 300, "the retry to start", poll=0.2)
        assert outcome(live, submission)["status"] == "pending"  # kept, to be retried
        assert live.dataset_versions() == versions and live.champion() == champion
        check_invariants(live, submission)
    finally:
        if _mounted(remote):
            subprocess.run(["umount", str(remote)], check=True)
        for path in (drill, merging, retry):
            path.unlink(missing_ok=True)
    wait_for(lambda: outcome(live, submission)["status"] == "done", 300, "the retried run")
    assert outcome(live, submission)["outcome"] == "promoted"
    check_invariants(live, submission)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB filesystem (tmpfs) at tmp_path/disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_during_a_merge_changes_nothing(tmp_path, small_disk) -> None:
    """Real intake and DVC on a dataset whose filesystem fills up while a batch is merged:
    a clear error, the dataset and data.dvc as they were, nothing left half-merged."""
    from core.objectstore import Store
    from core.policies import IngestLimits, SplitPolicy, ValidationPolicy
    from pipelines.data.dataset import DiskFull, load_index
    from pipelines.data.intake import Intake, IntakePaths, add_batch
    from pipelines.data.versions import DvcStore
    from tests.conftest import git_repo, write_class_folders

    repo = git_repo(small_disk / "repo")
    store = DvcStore(
        repo, repo / "data", str(tmp_path / "remote"), tmp_path / "cache", Store(str(tmp_path))
    )
    paths = IntakePaths(
        tmp_path / "staging",
        tmp_path / "quarantine",
        tmp_path / "accepted",
        tmp_path / "intake.lock",
    )
    policy = ValidationPolicy(min_images_per_new_class=2)
    first = write_class_folders(tmp_path / "first", {"cat": 6, "dog": 6})
    args = (store, Intake(paths, IngestLimits(), policy, SplitPolicy()))
    add_batch(first, *args, progress=lambda m: None)
    pointer = (repo / "data.dvc").read_text()
    index = load_index(repo / "data")
    free = shutil.disk_usage(small_disk).free
    big = write_class_folders(tmp_path / "big", {"cat": 4}, seed=5)
    for i in range(max(1, free // 400_000 + 2)):  # noise PNGs barely compress: > free space
        noise = os.urandom(400_000 - 64)
        (big / "cat" / f"noise-{i}.png").write_bytes(_png(noise))
    with pytest.raises(DiskFull, match=r"no space left under .*the dataset is unchanged"):
        add_batch(big, *args, progress=lambda m: None)
    assert (repo / "data.dvc").read_text() == pointer
    assert load_index(repo / "data").equals(index)
    assert not list(repo.glob(".data.*")) and not any(paths.staging.iterdir())
    assert len(store.versions()) == 1


def _png(payload: bytes) -> bytes:
    """A valid RGB PNG of random pixels carrying about ``len(payload)`` bytes."""
    import io

    import numpy as np
    from PIL import Image

    side = int((len(payload) / 3) ** 0.5)
    pixels = np.frombuffer(payload[: side * side * 3], dtype=np.uint8).reshape(side, side, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return out.getvalue()


def _announced(submission: str) -> bool:
    """Whether a retrain run was created for this submission (it may wait for its turn)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(limit=50)
    return any((run.parameters or {}).get("submission") == submission for run in found)


def test_prefect_restarted_with_runs_queued_keeps_first_in_first_out(live) -> None:
    """The Prefect server dies while one run works (held at a failpoint) and another
    submission waits; after `refit up` both are processed once each, oldest first, and each
    names the run that took it."""
    ensure_champion(live)
    drill = arm(live, "take pause")
    held = reached(drill, "take")
    first = submit(live, live.batch("fifo-1", COLOURS[:3], 8, seed=14))
    try:
        wait_for(held.exists, 300, "the first run to start", poll=0.2)
        queued = [submit(live, live.batch("fifo-2", COLOURS[:3], 8, seed=16))]
        for submission in queued:
            wait_for(lambda s=submission: _announced(s), SETTLE_S, f"a run for {submission}")
        _kill_tree(server_pid(live, "prefect"))
        assert live.refit("up", timeout=300).returncode == 0
        held.unlink()
    finally:
        drill.unlink(missing_ok=True)
        held.unlink(missing_ok=True)
    order = [first, *queued]
    for submission in order:
        wait_for(lambda s=submission: outcome(live, s)["status"] == "done", 400, submission)
        assert outcome(live, submission)["outcome"] == "promoted", outcome(live, submission)
        check_invariants(live, submission)
    merged = [v["batch_id"] for v in live.dataset_versions()]
    batches = [_state(live, s)["batch_id"] for s in order]
    assert sorted(batches, key=merged.index) == batches  # first in, first out
    taken_by = [runs.find_submission_run(s) for s in order]
    assert None not in taken_by and len(set(taken_by)) == 2, taken_by
