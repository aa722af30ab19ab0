"""Failpoints: off unless armed, only the drill's first line is live, each line used once."""

from __future__ import annotations

import subprocess
import sys
import threading

from core.faults import failpoint


def test_failpoints_are_off_unless_the_drills_first_line_names_them(tmp_path, monkeypatch):
    monkeypatch.delenv("REFIT_FAILPOINTS", raising=False)
    failpoint("take")  # no variable: nothing happens
    drill = tmp_path / "drill"
    monkeypatch.setenv("REFIT_FAILPOINTS", str(drill))
    failpoint("take")  # no file: nothing happens
    drill.write_text("merged kill\ntake kill\n")
    failpoint("take")  # not the first line: nothing happens
    assert drill.read_text() == "merged kill\ntake kill\n"


def test_kill_dies_as_a_crash_would_and_consumes_its_line(tmp_path):
    drill = tmp_path / "drill"
    drill.write_text("merged kill\ntake pause\n")
    code = "from core.faults import failpoint; failpoint('merged'); print('survived')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"REFIT_FAILPOINTS": str(drill), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == -9 and "survived" not in done.stdout
    assert drill.read_text() == "take pause\n"


def test_pause_holds_until_the_reached_file_is_removed(tmp_path, monkeypatch):
    drill = tmp_path / "drill"
    drill.write_text("take pause\n")
    monkeypatch.setenv("REFIT_FAILPOINTS", str(drill))
    paused = threading.Thread(target=failpoint, args=("take",))
    paused.start()
    reached = tmp_path / "drill.take.reached"
    while not reached.exists():
        paused.join(0.05)
    assert paused.is_alive() and drill.read_text() == ""
    reached.unlink()
    paused.join(30)
    assert not paused.is_alive()
