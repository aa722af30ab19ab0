"""The drop-folder watcher, a small service of its own: files dropped into ``incoming/`` are
submitted once settled, and a pending submission no run has in hand is announced (again
after ``orchestration.retry_after_s``: its run crashed, or the event was lost), so nothing
stays stranded. Run with ``python -m flows.watcher`` (``refit up`` does)."""

from __future__ import annotations

import time

from core.settings import get_settings


def watch() -> None:
    from core import runs
    from flows.deployments import announce
    from pipelines.data.submissions import Queue

    config = get_settings()
    queue = Queue.of(config)
    announced: dict[str, float] = {}
    print(f"watching {config.incoming_dir} and the queue in {config.store_url}", flush=True)
    while True:
        try:
            queue.adopt_dropped(config.incoming_dir, config.orchestration.settle_s)
            for pending in queue.pending():
                last = announced.get(pending.id)
                due = last is None or time.monotonic() - last >= config.orchestration.retry_after_s
                if due and (last is None or not runs.in_hand(pending.id)):
                    announce(pending.id)
                    announced[pending.id] = time.monotonic()
        except Exception as exc:  # keep watching; the next poll retries
            print(f"drop folder watcher: {exc}", flush=True)
        time.sleep(config.orchestration.incoming_poll_s)


if __name__ == "__main__":
    watch()
