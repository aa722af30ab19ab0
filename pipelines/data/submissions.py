"""Submitted batches waiting for a retrain: the queue, in the shared store, which survives
restarts and is the same for every host (the page, the CLI and the drop folder submit on
one host; a worker on another takes it).

A submission is ``submissions/<id>/`` in the store (:mod:`core.objectstore`): the batch as it
was uploaded (an archive, a CSV or a folder) under ``batch/``, and ``state.json``; while it
waits, a marker ``queue/<id>`` lists it. Its states:

- ``pending``: waiting for a retrain run;
- ``merged``: validated and merged into the dataset (``batch_id`` says which batch); a run
  that crashed after this point resumes at fine-tuning instead of merging twice;
- ``judged``: the challenger is registered, promoted or not (``version``); a run that
  failed after this point (serving down at reload) only goes live, never fine-tunes again;
- it leaves the queue once a run finishes with it: its state says ``done`` with the outcome
  (``rejected``, ``not-trainable``, ``promoted``, ``kept-champion``, ``awaiting-approval``:
  the challenger waits for a person in the registry, ``pipelines.judge.approval``) and its
  marker goes.

A submission is listed only once whole: the batch is uploaded first, then its state, then
its marker. :func:`advance` is the state machine (pure); :func:`next_step` says what a run
does next.

Files or folders dropped into the drop folder (``incoming/``) are submitted once they have
not changed for ``settle_s`` seconds (so a half-copied file is never read).
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from core.objectstore import Store

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
        "awaiting-approval": "done",
    },
    "judged": {"promoted": "done", "kept-champion": "done", "awaiting-approval": "done"},
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
    url: str = ""  # its folder in the shared store
    status: str = "pending"
    name: str = ""
    submitted_at: str = ""
    batch_id: str | None = None
    version: str | None = None  # the registered challenger, once judged
    promoted: bool | None = None
    outcome: str | None = None
    detail: str | None = None

    def state(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "url"}


def _new_id(name: str) -> str:
    """Sortable by submission time (to the nanosecond), unique, and readable."""
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40]
    nanos = time.time_ns() % 1_000_000_000
    return f"{time.strftime('%Y%m%d-%H%M%S')}.{nanos:09d}-{uuid.uuid4().hex[:4]}-{stem}"


def _safe_id(submission_id: str) -> bool:
    return bool(submission_id) and "/" not in submission_id and not submission_id.startswith(".")


@dataclass(frozen=True)
class Queue:
    """The submission queue in a shared store; ``fetched`` is this host's download cache."""

    store: Store
    fetched: Path

    @classmethod
    def of(cls, settings) -> Queue:
        """The queue the settings describe: in the shared store, fetched into the workspace."""
        return cls(settings.shared_store(), settings.fetched_dir)

    def _folder(self, submission_id: str) -> str:
        return self.store.path("submissions", submission_id)

    def _marker(self, submission_id: str) -> str:
        return self.store.path("queue", submission_id)

    def submit(self, source: Path, move: bool = False) -> Submission:
        """Put a batch in the queue (copied; with ``move`` the source is removed once it is
        in). Listed only once whole."""
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"{source}: no such file or folder")
        sub_id = _new_id(source.name)
        folder = self._folder(sub_id)
        self.store.put(source, f"{folder}/{BATCH_DIR}/{source.name}")
        submission = Submission(
            sub_id, folder, name=source.name, submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")
        )
        self.save(submission)
        self.store.write_bytes(self._marker(sub_id), b"")
        if move:
            shutil.rmtree(source) if source.is_dir() else source.unlink()
        return submission

    def save(self, submission: Submission) -> None:
        self.store.write_json(f"{submission.url}/{STATE_FILE}", submission.state())

    def load(self, submission_id: str) -> Submission | None:
        if not _safe_id(submission_id):
            return None
        folder = self._folder(submission_id)
        state = self.store.read_json(f"{folder}/{STATE_FILE}")
        return None if state is None else Submission(url=folder, **state)

    def pending(self) -> list[Submission]:
        """Queued submissions, oldest first (pending, merged or judged: not finished)."""
        found = []
        for sub_id in self.store.names(self.store.path("queue")):
            sub = self.load(sub_id) if not sub_id.endswith(".tmp") else None
            if sub is not None and sub.status == "done":  # finished, marker not yet gone
                self.store.delete(self._marker(sub_id))
            elif sub is not None:
                found.append(sub)
        return sorted(found, key=lambda s: s.id)

    def find(self, submission_id: str) -> Submission | None:
        """A submission by id, queued or finished."""
        return self.load(submission_id)

    def batch(self, submission: Submission) -> Path:
        """The uploaded batch on this host's disk (downloaded once from a remote store)."""
        remote = f"{submission.url}/{BATCH_DIR}/{submission.name}"
        if not self.store.remote:
            return Path(remote)
        local = self.fetched / submission.id / submission.name
        if not local.exists():
            partial = self.fetched / f".{submission.id}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            self.store.get(remote, partial / submission.name)
            partial.rename(local.parent)
        return local

    def mark_merged(self, submission: Submission, batch_id: str) -> None:
        submission.status = advance(submission.status, "merged")
        submission.batch_id = batch_id
        self.save(submission)

    def mark_judged(self, submission: Submission, version: str, promoted: bool) -> None:
        """The challenger is registered (and promoted or not): a later run only goes live."""
        submission.status = advance(submission.status, "judged")
        submission.version, submission.promoted = version, promoted
        self.save(submission)

    def finish(self, submission: Submission, outcome: str, detail: str = "") -> Submission:
        """Take a submission out of the queue with its outcome (an event that ends it)."""
        status = advance(submission.status, outcome)
        if status != "done":
            raise ValueError(f"{outcome!r} does not finish a {submission.status!r} submission")
        submission.status, submission.outcome, submission.detail = status, outcome, detail
        self.save(submission)
        self.store.delete(self._marker(submission.id))
        shutil.rmtree(self.fetched / submission.id, ignore_errors=True)
        return submission

    def adopt_dropped(self, incoming: Path, settle_s: float = 5.0) -> list[Submission]:
        """Submit files and folders dropped into ``incoming`` (moved), once settled."""
        adopted = []
        if not incoming.is_dir():
            return adopted
        now = time.time()
        for path in sorted(incoming.iterdir()):
            if path.name.startswith("."):
                continue
            newest = max(
                [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")]
                if path.is_dir()
                else [path.stat().st_mtime]
            )
            if now - newest >= settle_s:
                adopted.append(self.submit(path, move=True))
        return adopted
