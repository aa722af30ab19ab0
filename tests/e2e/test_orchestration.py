"""The product end to end: real Prefect (server + a worker of the pool), real MLflow, real DVC,
real serving, on tiny coloured images. Runs in file order on one platform: bootstrap, a
passing and a new-class batch submitted at once, a dropped file, a flow killed while
training, and serving down during the reload step. (A rejected batch changes nothing:
tests/browser, where the Label page submits one.)"""

from __future__ import annotations

import json
import os
import shutil
import signal

import httpx
import psutil
import pytest

from core import runs
from tests.live_platform import (
    COLOURS,
    RUN_TIMEOUT_S,
    SETTLE_S,
    LivePlatform,
    ensure_champion,
    tiny_model_file,
    wait_for,
)

pytestmark = pytest.mark.e2e


def pending(live: LivePlatform) -> list[str]:
    """Queued submissions and files in the drop folder not yet submitted."""
    dropped = sorted(p.name for p in (live.workspace / "incoming").glob("[!.]*"))
    return [s.id for s in live.queue().pending()] + dropped


def outcome(live: LivePlatform, submission: str) -> dict:
    found = live.queue().find(submission)
    assert found is not None
    return {"status": found.status, "outcome": found.outcome, "detail": found.detail}


def submit(live: LivePlatform, batch, follow: bool = False) -> str:
    done = live.refit("data", "submit", str(batch), "--follow" if follow else "--no-follow")
    assert "Submitted" in done.stdout, done.stdout + done.stderr
    return done.stdout.split("Submitted", 1)[1].split()[0].rstrip(";:.")


def test_bootstrap_imports_a_users_model_as_champion(live: LivePlatform) -> None:
    before = live.champion()
    model = tiny_model_file(live.root / "user-model.keras")
    seed = live.batch("seed", COLOURS[:3], 30, seed=1)
    run_id = runs.start("bootstrap/bootstrap", {"model": str(model), "seed": str(seed)})
    final = runs.follow(run_id, lambda view: None, timeout_s=RUN_TIMEOUT_S)
    assert final.state == "COMPLETED", final.message
    names = [s["name"] for s in final.steps]
    assert names[:3] == ["seed the dataset", "make the model", "judge and promote"], names
    champion = live.champion()
    assert champion is not None and champion != before
    wait_for(lambda: live.served_version() == champion, SETTLE_S, f"serving to load v{champion}")
    assert len(live.dataset_versions()) >= 1


def test_two_batches_queue_one_dropped_one_bringing_a_new_class(live: LivePlatform) -> None:
    """Submitted at once, one through the CLI and one dropped into incoming/ by hand."""
    ensure_champion(live)
    versions = len(live.dataset_versions())
    yellow = submit(live, live.batch("yellow", COLOURS, 14, seed=3))
    dropped = live.batch("dropped", COLOURS[:3], 12, seed=2)
    shutil.copytree(dropped, live.workspace / "incoming" / "dropped-by-hand")
    wait_for(lambda: len(pending(live)) == 2 or not pending(live), SETTLE_S, "the drop adopted")
    wait_for(lambda: not pending(live), 400, "both submissions processed")
    assert outcome(live, yellow)["outcome"] == "promoted"
    assert len(live.dataset_versions()) == versions + 2  # one version per batch
    champion = live.champion()
    wait_for(lambda: live.served_version() == champion, SETTLE_S, f"serving to load v{champion}")
    described = httpx.get(f"{live.serving_url}/model").json()["model"]
    assert described["classes"] == COLOURS  # the head grew; old indices kept
    view = runs.view(runs.find_submission_run(yellow))
    assert "new_class_recall.yellow" in view.report and "Live check" in view.report


def _flow_process(live: LivePlatform) -> psutil.Process | None:
    worker = psutil.Process(json.loads((live.workspace / "run" / "worker.pid").read_text())["pid"])
    children = worker.children(recursive=True)
    return next((c for c in children if "python" in c.name()), None)


def test_killing_the_flow_while_training_keeps_the_champion_and_resumes(live) -> None:
    ensure_champion(live)
    champion = live.champion()
    submission = submit(live, live.batch("killed", COLOURS[:3], 8, seed=6))
    run_id = wait_for(lambda: runs.find_submission_run(submission), SETTLE_S, "the run", poll=0.3)
    wait_for(
        lambda: any(s["name"] == "fine-tune" for s in runs.view(run_id).steps),
        120,
        "training to start",
        poll=0.3,
    )
    process = _flow_process(live)
    assert process is not None
    process.kill()  # SIGKILL: no clean-up code runs
    process.wait(30)
    assert live.champion() == champion
    assert outcome(live, submission)["status"] == "merged"  # still queued, resumes at training
    assert "merged" in live.refit("status").stdout  # `refit status` shows what is stuck
    # Nobody restarts anything: the watcher announces the stranded submission again.
    wait_for(lambda: outcome(live, submission)["status"] == "done", 300, "the retried run")
    assert outcome(live, submission)["outcome"] == "promoted"


def test_serving_down_during_reload_fails_the_run_and_the_registry_tells(live) -> None:
    ensure_champion(live)
    serving_pid = json.loads((live.workspace / "run" / "serving.pid").read_text())["pid"]
    os.killpg(serving_pid, signal.SIGTERM)
    psutil.Process(serving_pid).wait(30)
    try:
        submission = submit(live, live.batch("unserved", COLOURS[:3], 8, seed=7))
        wait_for(lambda: outcome(live, submission)["status"] != "pending", 300, "the merge")
        run_id = runs.find_submission_run(submission)
        final = runs.follow(run_id, lambda view: None, timeout_s=RUN_TIMEOUT_S)
        assert final.state == "FAILED"
        assert any(s["name"] == "reload serving" and s["state"] == "Failed" for s in final.steps)
        promoted = live.champion()
        assert promoted is not None  # the registry says which version is champion
        assert outcome(live, submission)["status"] == "judged"  # not trained again later
        registered = len(live.refit("model", "list").stdout.splitlines())
    finally:
        assert live.refit("up", timeout=300).returncode == 0
    wait_for(lambda: live.served_version() == promoted, 120, "serving back with the champion")
    # A later run only goes live: finished exactly once, with the version already registered.
    wait_for(lambda: outcome(live, submission)["status"] == "done", 300, "the resumed run")
    assert outcome(live, submission)["outcome"] == "promoted"
    assert f"v{promoted}" in outcome(live, submission)["detail"]
    assert len(live.refit("model", "list").stdout.splitlines()) == registered


def test_the_prefect_api_refuses_anonymous_and_foreign_callers(live: LivePlatform) -> None:
    """Nothing that starts a flow (a rollback moves the champion) is reachable without the
    credential `refit up` made; no other origin is let in by CORS."""
    api = f"http://127.0.0.1:{live.env['REFIT_PREFECT_PORT']}/api"
    user, password = (live.workspace / "prefect-auth").read_text().strip().split(":", 1)
    evil = {"Origin": "http://evil.example"}
    assert httpx.post(f"{api}/deployments/filter", json={}, headers=evil).status_code == 401
    found = httpx.post(f"{api}/deployments/filter", json={}, auth=(user, password))
    assert found.status_code == 200
    rollback = next(d["id"] for d in found.json() if d["name"] == "rollback")
    champion = live.champion()
    forged = httpx.post(
        f"{api}/deployments/{rollback}/create_flow_run",
        json={"parameters": {"reason": "forged"}},
        headers=evil,
    )
    assert forged.status_code == 401
    assert forged.headers.get("access-control-allow-origin") in (None, live_origin(live))
    preflight = httpx.options(
        f"{api}/deployments/{rollback}/create_flow_run",
        headers={**evil, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers.get("access-control-allow-origin") in (None, live_origin(live))
    assert httpx.get(f"{api}/health").status_code == 200  # probes stay open
    assert live.champion() == champion
    assert oct((live.workspace / "prefect-auth").stat().st_mode & 0o777) == "0o600"


def live_origin(live: LivePlatform) -> str:
    return f"http://127.0.0.1:{live.env['REFIT_PREFECT_PORT']}"


def test_a_submission_is_followed_to_the_run_that_took_it_last(live: LivePlatform) -> None:
    """A run queued early can take a submission after a newer run was killed holding it (the
    watcher and the CLI both announce): the CLI and the pages follow the later taker."""
    from uuid import uuid4

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running, Scheduled

    @flow(name="retrain")
    def stand_in() -> None: ...

    took = [f"{runs.TOOK}{uuid4().hex}"]
    with get_client(sync_client=True) as client:
        queued_early = client.create_flow_run(stand_in, tags=took, state=Scheduled())
        killed = client.create_flow_run(stand_in, tags=took, state=Scheduled())
        for run in (killed, queued_early):  # the newer one starts (and dies) first
            client.set_flow_run_state(run.id, Running(), force=True)
        assert runs.find_submission_run(took[0].removeprefix(runs.TOOK)) == str(queued_early.id)
        for run in (killed, queued_early):
            client.set_flow_run_state(run.id, Completed(), force=True)
