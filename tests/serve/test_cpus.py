"""Cores the server's ONNX Runtime may use: the affinity, capped by a cgroup v2 CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trtops_worker.serve.cpus import cgroup_cpu_limit, usable_cpus


@pytest.mark.parametrize(
    ("line", "cpus"),
    [
        ("max 100000\n", None),  # no limit
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("0 100000", None),  # nonsense is no limit, never zero threads
        ("garbage", None),
        ("", None),
    ],
)
def test_cgroup_cpu_limit(line: str, cpus: float | None) -> None:
    assert cgroup_cpu_limit(line) == cpus


def test_a_quota_caps_the_cores_and_rounds_up(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(cpu_max).cores == 1
    assert usable_cpus(cpu_max).quota == 0.5
    cpu_max.write_text("100000000 100000\n")  # 1000 CPUs: the affinity is the cap
    assert usable_cpus(cpu_max).cores == len(os.sched_getaffinity(0))


def test_without_cgroup_v2_the_affinity_is_all_there_is(tmp_path: Path) -> None:
    cpus = usable_cpus(tmp_path / "missing")
    assert cpus.quota is None
    assert cpus.cores == len(os.sched_getaffinity(0))
