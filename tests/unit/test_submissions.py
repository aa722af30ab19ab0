"""The queue: atomic submit, adopting dropped files once settled, resume state; on a local
folder and on a real S3 API server (moto)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core.objectstore import Store
from pipelines.data import submissions


@pytest.fixture(params=["local", "s3"])
def queue(request, tmp_path: Path) -> submissions.Queue:
    if request.param == "local":
        return submissions.Queue(Store(str(tmp_path / "store")), tmp_path / "fetched")
    s3 = request.getfixturevalue("s3_server")
    return submissions.Queue(s3.store(f"queue-{os.urandom(4).hex()}"), tmp_path / "fetched")


def test_submit_copies_atomically_and_lists_oldest_first(tmp_path: Path, queue) -> None:
    batch = tmp_path / "batch.zip"
    batch.write_bytes(b"zip")
    first = queue.submit(batch)
    second = queue.submit(batch)
    assert batch.exists()  # copied, not moved
    assert [s.id for s in queue.pending()] == [first.id, second.id]
    assert queue.batch(first).read_bytes() == b"zip" and first.status == "pending"


def test_a_submission_is_listed_only_once_whole(tmp_path: Path, queue) -> None:
    batch = tmp_path / "batch.zip"
    batch.write_bytes(b"zip")
    sub = queue.submit(batch)
    queue.store.delete(queue.store.path("queue", sub.id))  # as if killed before the marker
    assert queue.pending() == []


def test_a_missing_batch_is_refused(tmp_path: Path, queue) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.zip"):
        queue.submit(tmp_path / "nothing.zip")


def test_dropped_files_are_adopted_only_once_settled(tmp_path: Path, queue) -> None:
    incoming = tmp_path / "incoming"
    folder = incoming / "dropped"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"x")
    assert queue.adopt_dropped(incoming, settle_s=60) == []  # still being written?
    old = time.time() - 120
    for path in (folder, folder / "a.png"):
        os.utime(path, (old, old))
    adopted = queue.adopt_dropped(incoming, settle_s=60)
    assert len(adopted) == 1 and adopted[0].name == "dropped"
    assert (queue.batch(adopted[0]) / "a.png").read_bytes() == b"x"
    assert not folder.exists()  # moved into the submission
    assert queue.adopt_dropped(incoming, settle_s=0) == []  # not adopted twice


def test_merged_state_survives_and_finish_leaves_the_queue(tmp_path: Path, queue) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text("path,label\n")
    sub = queue.submit(batch)
    queue.mark_merged(sub, "batch-1")
    again = queue.pending()[0]  # as a restarted process reads it
    assert (again.status, again.batch_id) == ("merged", "batch-1")
    queue.finish(again, "promoted", "v2")
    assert queue.pending() == []
    found = queue.find(sub.id)
    assert found is not None and (found.status, found.outcome) == ("done", "promoted")
    assert queue.find("../etc") is None


@pytest.mark.parametrize(
    ("status", "event", "after"),
    [
        ("pending", "merged", "merged"),
        ("pending", "rejected", "done"),
        ("merged", "promoted", "done"),
        ("merged", "kept-champion", "done"),
        ("merged", "not-trainable", "done"),
        ("merged", "awaiting-approval", "done"),  # the challenger waits in the registry
        ("judged", "awaiting-approval", "done"),  # resumed after a crash: still waits
    ],
)
def test_the_state_machine_moves_a_submission_on(status: str, event: str, after: str) -> None:
    assert submissions.advance(status, event) == after


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ("merged", "merged"),  # never merged twice
        ("pending", "promoted"),  # never promoted before it was merged
        ("done", "rejected"),  # a finished submission stays finished
        ("pending", "not-trainable"),
    ],
)
def test_the_state_machine_refuses_impossible_moves(status: str, event: str) -> None:
    with pytest.raises(ValueError, match="cannot become"):
        submissions.advance(status, event)


def test_next_step_resumes_a_merged_submission_at_fine_tuning() -> None:
    assert submissions.next_step("pending") == "validate"
    assert submissions.next_step("merged") == "fine-tune"
    assert submissions.next_step("done") is None
    with pytest.raises(ValueError, match="unknown"):
        submissions.next_step("lost")


def test_finish_refuses_an_outcome_that_cannot_end_the_submission(tmp_path: Path, queue) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text("path,label\n")
    sub = queue.submit(batch)
    with pytest.raises(ValueError):
        queue.finish(sub, "promoted")  # not merged yet
    assert queue.pending()[0].status == "pending"  # unchanged


def test_a_judged_submission_only_goes_live_again(tmp_path: Path, queue) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text("path,label\n")
    sub = queue.submit(batch)
    queue.mark_merged(sub, "batch-1")
    queue.mark_judged(sub, "7", promoted=True)
    again = queue.pending()[0]  # the next run reads it
    assert (again.status, again.version, again.promoted) == ("judged", "7", True)
    assert submissions.next_step(again.status) == "go live"
    with pytest.raises(ValueError):
        queue.mark_judged(again, "8", promoted=True)  # never judged twice
    queue.finish(again, "promoted", "v7")


def test_wrong_s3_credentials_are_refused_naming_the_settings(tmp_path: Path, monkeypatch) -> None:
    """A real S3 server that checks signatures (moto with auth on): the right key works,
    a wrong secret is refused with a message naming the settings and the credentials."""
    import json
    import subprocess
    import sys

    import boto3

    from core.objectstore import StoreError
    from tests.conftest import free_port
    from tests.servers import wait_http

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},  # the IAM set-up below
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(endpoint, server, "moto")  # (this request counts as one action)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="refit")
        key = iam.create_access_key(UserName="refit")["AccessKey"]
        allow = {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}  # fmt: skip
        iam.put_user_policy(UserName="refit", PolicyName="s3", PolicyDocument=json.dumps(allow))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="team")
        Store("s3://team/shared", endpoint).check()  # the right key
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(StoreError) as refused:
            Store("s3://team/shared", endpoint).check()
        message = str(refused.value)
        assert "REFIT_STORE_URL" in message and "AWS_* credentials" in message
        assert endpoint in message
    finally:
        server.terminate()
        server.wait(timeout=15)
