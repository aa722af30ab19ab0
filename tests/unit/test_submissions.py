"""The pending queue: atomic submit, adopting dropped files once settled, resume state."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipelines import submissions


def test_submit_copies_atomically_and_lists_oldest_first(tmp_path: Path) -> None:
    batch = tmp_path / "batch.zip"
    batch.write_bytes(b"zip")
    incoming = tmp_path / "incoming"
    first = submissions.submit(batch, incoming)
    second = submissions.submit(batch, incoming)
    assert batch.exists()  # copied, not moved
    assert [s.id for s in submissions.pending(incoming)] == [first.id, second.id]
    assert first.batch.read_bytes() == b"zip" and first.status == "pending"
    assert not list(incoming.glob(".*"))  # no half-built submission left behind


def test_a_missing_batch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.zip"):
        submissions.submit(tmp_path / "nothing.zip", tmp_path / "incoming")


def test_dropped_files_are_adopted_only_once_settled(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    folder = incoming / "dropped"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"x")
    assert submissions.adopt_dropped(incoming, settle_s=60) == []  # still being written?
    old = time.time() - 120
    for path in (folder, folder / "a.png"):
        os.utime(path, (old, old))
    adopted = submissions.adopt_dropped(incoming, settle_s=60)
    assert len(adopted) == 1 and adopted[0].batch.name == "dropped"
    assert not folder.exists()  # moved into the submission
    assert submissions.adopt_dropped(incoming, settle_s=0) == []  # not adopted twice


def test_merged_state_survives_and_finish_leaves_the_queue(tmp_path: Path) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text("path,label\n")
    incoming, done = tmp_path / "incoming", tmp_path / "done"
    sub = submissions.submit(batch, incoming)
    submissions.mark_merged(sub, "batch-1")
    again = submissions.pending(incoming)[0]  # as a restarted process reads it
    assert (again.status, again.batch_id) == ("merged", "batch-1")
    submissions.finish(again, done, "promoted", "v2")
    assert submissions.pending(incoming) == []
    found = submissions.find(incoming, done, sub.id)
    assert found is not None and (found.status, found.outcome) == ("done", "promoted")
    assert submissions.find(incoming, done, "../etc") is None


@pytest.mark.parametrize(
    ("status", "event", "after"),
    [
        ("pending", "merged", "merged"),
        ("pending", "rejected", "done"),
        ("merged", "promoted", "done"),
        ("merged", "kept-champion", "done"),
        ("merged", "not-trainable", "done"),
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


def test_finish_refuses_an_outcome_that_cannot_end_the_submission(tmp_path: Path) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text("path,label\n")
    sub = submissions.submit(batch, tmp_path / "incoming")
    with pytest.raises(ValueError):
        submissions.finish(sub, tmp_path / "done", "promoted")  # not merged yet
    assert submissions.pending(tmp_path / "incoming")[0].status == "pending"  # unchanged


def test_a_judged_submission_only_goes_live_again(tmp_path: Path) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text("path,label\n")
    sub = submissions.submit(batch, tmp_path / "incoming")
    submissions.mark_merged(sub, "batch-1")
    submissions.mark_judged(sub, "7", promoted=True)
    again = submissions.pending(tmp_path / "incoming")[0]  # the next run reads it
    assert (again.status, again.version, again.promoted) == ("judged", "7", True)
    assert submissions.next_step(again.status) == "go live"
    with pytest.raises(ValueError):
        submissions.mark_judged(again, "8", promoted=True)  # never judged twice
    submissions.finish(again, tmp_path / "done", "promoted", "v7")
