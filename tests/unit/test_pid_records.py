"""A pid file is trusted only while its exact process lives: dead or reused pids are stale."""

import os
import subprocess

import psutil

from refit.platform import PidRecord


def test_live_process_is_recognised() -> None:
    me = psutil.Process()
    assert PidRecord(me.pid, me.create_time()).process() is not None


def test_dead_pid_is_stale() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert PidRecord(proc.pid, 0.0).process() is None


def test_reused_pid_is_stale() -> None:
    # Our pid, but a start time that is not ours: another process got the pid after a crash.
    me = psutil.Process()
    assert PidRecord(os.getpid(), me.create_time() - 3600).process() is None
