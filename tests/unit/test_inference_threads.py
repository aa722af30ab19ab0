"""Inference threads per replica: what the setting says, else the CPUs the process may use,
capped by its container's CPU limit (cgroup v2 ``cpu.max``)."""

from __future__ import annotations

import os

import pytest

from serving.engines import inference_threads

CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", CPUS),  # no limit
        ("50000 100000\n", 1),  # half a CPU still gets one thread
        ("150000 100000\n", min(CPUS, 2)),  # 1.5 CPUs: two threads, never more than we may use
        ("garbled\n", CPUS),
    ],
)
def test_threads_follow_the_container_cpu_limit(tmp_path, cpu_max, expected) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max)
    assert inference_threads(0, limit) == expected


def test_the_setting_wins_and_no_cgroup_means_the_affinity(tmp_path) -> None:
    assert inference_threads(3, tmp_path / "missing") == 3
    assert inference_threads(0, tmp_path / "missing") == CPUS
