"""Submitted batches waiting for a retrain: the pending queue, which survives restarts.

A submission is a folder ``incoming/<id>/`` holding the batch as it was uploaded (an archive,
a CSV or a folder, under ``batch/``) and ``state.json``. Its states:

- ``pending``: waiting for a retrain run;
- ``merged``: validated and merged into the dataset (``batch_id`` says which batch); a run
  that crashed after this point resumes at fine-tuning instead of merging twice;
- ``judged``: the challenger is registered, promoted or not (``version``); a run that
  failed after this point (serving down at reload) only goes live, never fine-tunes again;
- it leaves the queue once a run finishes with it: moved to ``submissions/<id>/`` with the
  outcome (``rejected``, ``not-trainable``, ``promoted``, ``kept-champion``) in its state.

:func:`advance` is the state machine (pure); :func:`next_step` says what a run does next.

Files or folders dropped straight into ``incoming/`` are adopted as submissions once they
have not changed for ``settle_s`` seconds (so a half-copied file is never read).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "state.json"
BATCH_DIR = "batch"

# The submission state machine: status -> event -> next status. A finished submission
# ("done") keeps the event that finished it as its outcome.
TRANSITIONS: dict[str, dict[str, str]] = {
    "pending": {"merged": "merged", "rejected": "done"},
    "merged": {
        "judged": "judged",
        "not-trainable": "done",
        "promoted": "done",
        "kept-champion": "done",
    },
    "judged": {"promoted": "done", "kept-champion": "done"},
}
STEPS = {"pending": "validate", "merged": "fine-tune", "judged": "go live"}


def advance(status: str, event: str) -> str:
    """The status after ``event`` happened to a submission in ``status``.

    Raises:
        ValueError: ``event`` cannot happen in ``status`` (e.g. merging a merged batch).
    """
    try:
        return TRANSITIONS[status][event]
    except KeyError:
        raise ValueError(f"a {status!r} submission cannot become {event!r}") from None


def next_step(status: str) -> str | None:
    """What a run does next with a submission in ``status``: ``validate`` (then merge or
    reject), ``fine-tune`` (then judge), ``go live`` (a judged challenger: serving reloads
    and the smoke check runs, never a second fine-tune), or None when it is done."""
    if status not in STEPS and status != "done":
        raise ValueError(f"unknown submission status {status!r}")
    return STEPS.get(status)


@dataclass
class Submission:
    id: str
    folder: Path
    status: str = "pending"
    name: str = ""
    submitted_at: str = ""
    batch_id: str | None = None
    version: str | None = None  # the registered challenger, once judged
    promoted: bool | None = None
    outcome: str | None = None
    detail: str | None = None

    @property
    def batch(self) -> Path:
        """The uploaded batch itself (an archive, CSV or folder)."""
        return next((self.folder / BATCH_DIR).iterdir())

    def save(self) -> None:
        state = {k: v for k, v in asdict(self).items() if k != "folder"}
        tmp = self.folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.folder / STATE_FILE)


def _new_id(name: str) -> str:
    """Sortable by submission time (to the nanosecond), unique, and readable."""
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40]
    nanos = time.time_ns() % 1_000_000_000
    return f"{time.strftime('%Y%m%d-%H%M%S')}.{nanos:09d}-{uuid.uuid4().hex[:4]}-{stem}"


def submit(source: Path, incoming: Path, move: bool = False) -> Submission:
    """Put a batch in the queue (copied, or moved with ``move``); atomic: a half-written
    submission is never visible as pending."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    incoming.mkdir(parents=True, exist_ok=True)
    sub_id = _new_id(source.name)
    building = incoming / f".{sub_id}.partial"
    (building / BATCH_DIR).mkdir(parents=True)
    target = building / BATCH_DIR / source.name
    if move:
        shutil.move(str(source), target)
    elif source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    submission = Submission(
        sub_id, building, name=source.name, submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")
    )
    submission.save()
    os.replace(building, incoming / sub_id)
    submission.folder = incoming / sub_id
    return submission


def load(folder: Path) -> Submission:
    state = json.loads((folder / STATE_FILE).read_text())
    return Submission(folder=folder, **state)


def adopt_dropped(incoming: Path, settle_s: float = 5.0) -> list[Submission]:
    """Wrap files and folders dropped into ``incoming/`` as submissions, once settled."""
    adopted = []
    if not incoming.is_dir():
        return adopted
    now = time.time()
    for path in sorted(incoming.iterdir()):
        if path.name.startswith(".") or (path / STATE_FILE).exists():
            continue
        newest = max(
            [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")]
            if path.is_dir()
            else [path.stat().st_mtime]
        )
        if now - newest >= settle_s:
            adopted.append(submit(path, incoming, move=True))
    return adopted


def pending(incoming: Path) -> list[Submission]:
    """Queued submissions, oldest first (pending and merged-but-unfinished)."""
    if not incoming.is_dir():
        return []
    found = [
        load(p)
        for p in incoming.iterdir()
        if not p.name.startswith(".") and (p / STATE_FILE).exists()
    ]
    return sorted(found, key=lambda s: s.id)


def find(incoming: Path, done: Path, submission_id: str) -> Submission | None:
    """A submission by id, queued or finished."""
    for root in (incoming, done):
        folder = root / Path(submission_id).name
        if (folder / STATE_FILE).is_file():
            return load(folder)
    return None


def mark_merged(submission: Submission, batch_id: str) -> None:
    submission.status, submission.batch_id = advance(submission.status, "merged"), batch_id
    submission.save()


def mark_judged(submission: Submission, version: str, promoted: bool) -> None:
    """The challenger is registered (and promoted or not): a later run only goes live."""
    submission.status = advance(submission.status, "judged")
    submission.version, submission.promoted = version, promoted
    submission.save()


def finish(submission: Submission, done: Path, outcome: str, detail: str = "") -> Submission:
    """Take a submission out of the queue with its outcome (an event that ends it)."""
    status = advance(submission.status, outcome)
    if status != "done":
        raise ValueError(f"{outcome!r} does not finish a {submission.status!r} submission")
    submission.status, submission.outcome, submission.detail = status, outcome, detail
    submission.save()
    done.mkdir(parents=True, exist_ok=True)
    target = done / submission.id
    os.replace(submission.folder, target)
    submission.folder = target
    return submission
