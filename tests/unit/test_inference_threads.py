"""Inference threads per replica: what the setting says, else the CPUs the process may use,
capped by its container's CPU limit (cgroup v2 ``cpu.max``); 0 (the libraries' own sizing)
when nothing limits it below the machine."""

from __future__ import annotations

import os

import pytest

from serving.engines import inference_threads

CPUS, MACHINE = len(os.sched_getaffinity(0)), os.cpu_count() or 1


def capped(count: int) -> int:
    return count if count < MACHINE else 0


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", capped(CPUS)),  # no limit
        ("50000 100000\n", capped(1)),  # half a CPU still gets one thread
        ("150000 100000\n", capped(min(CPUS, 2))),  # 1.5 CPUs: two, never more than usable
        ("garbled\n", capped(CPUS)),
    ],
)
def test_threads_follow_the_container_cpu_limit(tmp_path, cpu_max, expected) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max)
    assert inference_threads(0, limit) == expected


def test_the_setting_wins_and_no_cgroup_means_the_affinity(tmp_path) -> None:
    assert inference_threads(3, tmp_path / "missing") == 3
    assert inference_threads(0, tmp_path / "missing") == capped(CPUS)


def test_a_process_pinned_to_fewer_cpus_gets_that_many(tmp_path) -> None:
    if MACHINE < 2:
        pytest.skip("one CPU: nothing to pin to fewer of")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert inference_threads(0, tmp_path / "missing") == 1
    finally:
        os.sched_setaffinity(0, before)
