"""Failpoints: named places in a run where a drill (or the fault-matrix tests) can make the
process die as a crash would, or hold it still while something else breaks.

They are off unless ``REFIT_FAILPOINTS`` names a drill file (set it before ``refit up``):
one ``<name> <action>`` per line, taken in order. Only the first line is live; when a run
reaches that failpoint the line is consumed and acted on:

- ``kill``: SIGKILL this process (no clean-up code runs);
- ``pause``: write ``failpoints.<name>.reached`` and wait until that file is removed.

With the variable set and no file, a failpoint is one ``stat``. Names: see ``FAILPOINTS``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAILPOINTS = {
    "take": "a retrain run starts, before it takes any submission",
    "merge.swapped": "the merged dataset is in place, not yet versioned",
    "merge.versioned": "the new dataset version is recorded, the old state not yet dropped",
    "merged": "the submission is marked merged, before fine-tuning",
    "register": "the challenger's MLflow run is started, its model not yet registered",
    "registered": "the challenger is registered, before the gate's promotion",
    "promote.intent": "the alias move is written as intent, champion not yet moved",
    "judged": "the submission is marked judged, before serving reloads",
    "live": "serving answers with the new champion, before the submission is finished",
}


def failpoint(name: str) -> None:
    """Act on the drill's first line if it names this failpoint (see the module docstring)."""
    assert name in FAILPOINTS, name
    drill = os.environ.get("REFIT_FAILPOINTS")
    path = Path(drill) if drill else None
    if path is None or not path.is_file():
        return
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0][0] != name:
        return
    action = lines[0][1] if len(lines[0]) > 1 else "kill"
    rest = "".join(" ".join(line) + "\n" for line in lines[1:])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(rest)
    tmp.replace(path)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause":
        reached = path.with_name(f"{path.name}.{name}.reached")
        reached.write_text(str(os.getpid()))
        while reached.exists():
            time.sleep(0.1)
    else:
        raise ValueError(f"{path}: unknown failpoint action {action!r} (kill or pause)")
