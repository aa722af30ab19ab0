"""Refit for a team, for real, on network namespaces (tests/team_topology.py): Postgres, an S3
server, MLflow on both, Prefect on Postgres; two worker hosts; two serving replicas behind
nginx. A batch submitted on a serving host is validated, merged (DVC push to S3), and its
run is killed with its worker host during fine-tuning: the run crashes, the champion stays,
and the other worker finishes the submission; both replicas then answer with the new
version; a serving host's Label page fetches the ImageNet embedding a worker shared. Skips
(saying why) without root or nginx."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pipelines.models.embedding import embedding_path
from tests.live_platform import (
    COLOURS,
    RUN_TIMEOUT_S,
    SETTLE_S,
    TOKEN,
    tiny_model_file,
    wait_for,
)
from tests.team_topology import start_team, unavailable

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(f"team topology: {why}")
    team = start_team(tmp_path_factory.mktemp("team"))
    yield team
    team.stop()


def _running_worker(team) -> str | None:
    """The worker host whose worker has a flow run in hand (a child process)."""
    import psutil

    for host in ("w1", "w2"):
        try:
            if psutil.Process(team.worker_pid(host)).children(recursive=True):
                return host
        except psutil.NoSuchProcess:  # the worker killed with its host
            continue
    return None


def test_a_batch_is_trained_on_another_host_and_survives_a_dead_worker(team, tmp_path) -> None:
    from core import runs
    from tests.conftest import write_class_folders

    with team.client():
        # The first champion: a tiny user model, bootstrapped by whichever worker takes it.
        model = tiny_model_file(tmp_path / "user-model.keras")
        seed = write_class_folders(tmp_path / "seed", {c: 30 for c in COLOURS[:3]}, seed=1)
        run_id = runs.start("bootstrap/bootstrap", {"model": str(model), "seed": str(seed)})
        final = runs.follow(run_id, lambda view: None, timeout_s=RUN_TIMEOUT_S)
        assert final.state == "COMPLETED", final.message
        first = team.champion()
        assert first is not None
        wait_for(lambda: set(team.served_versions().values()) == {first}, SETTLE_S, "both replicas")

        # A batch with a new class, submitted on a serving host (into the S3 queue).
        batch = write_class_folders(tmp_path / "yellow", {c: 14 for c in COLOURS}, seed=3)
        submitted = team.refit("s1", "data", "submit", str(batch), "--no-follow")
        assert "Submitted" in submitted.stdout, submitted.stdout + submitted.stderr
        submission = submitted.stdout.split("Submitted", 1)[1].split()[0].rstrip(";:.")
        killed_run = wait_for(lambda: runs.find_submission_run(submission), SETTLE_S, "a run")
        wait_for(
            lambda: any(s["name"] == "fine-tune" for s in runs.view(killed_run).steps),
            120,
            "fine-tuning to start",
            poll=0.3,
        )
        dead = wait_for(lambda: _running_worker(team), 30, "the worker running it", poll=0.2)
        team.kill_host_worker(dead)

        # The run crashes (its heartbeats stop); the champion has not moved.
        wait_for(lambda: runs.view(killed_run).state == "CRASHED", 150, "the run to crash")
        assert team.champion() == first

        # The submission is announced again and the other worker completes it.
        def finished():
            run = runs.find_submission_run(submission)
            return run if run != killed_run and runs.view(run).final else None

        retried = wait_for(finished, 300, "the retried run", poll=2)
        view = runs.view(retried)
        assert view.state == "COMPLETED", view.message
        alive = "w2" if dead == "w1" else "w1"  # the other worker host ran it
        assert view.name in (team.root / alive / "workspace" / "logs" / "worker.log").read_text()
        second = team.champion()
        assert second != first
        # Every replica answered with it before the run reported done.
        assert team.served_versions() == {"s1": second, "s2": second}

    # The label queue's ImageNet embedding (the default): built where a worker registered
    # the version, shared through S3; a serving host fetches it on the Label page's first use.
    built = team.root / "s2" / "workspace" / "weights" / embedding_path(Path(".")).name
    assert not built.exists()
    queue = httpx.get(f"{team.replica_url('s2')}/label/queue?n=5",
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)  # fmt: skip
    assert queue.status_code == 200, queue.text
    assert "champion's own features" not in queue.json()["note"]
    assert built.is_file()

    # The dataset and its version log are in the object store, pushed by the workers.
    import boto3

    from tests.servers import boto_credentials

    s3 = boto3.client("s3", endpoint_url=team.s3.endpoint, **boto_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="refit-team")["Contents"]]
    assert any(k.startswith("shared/dvc/") for k in keys)
    log = s3.get_object(Bucket="refit-team", Key="shared/dataset-versions/versions.jsonl")
    assert len(log["Body"].read().decode().splitlines()) == 2  # seed, then the batch once
    state = team.refit("s2", "status")
    assert "not answering" not in state.stdout, state.stdout
