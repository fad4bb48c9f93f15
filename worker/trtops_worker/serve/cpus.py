"""How many cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota.

``os.cpu_count()`` is the node's core count: in a pod limited to 2 CPUs on a 64-core node,
ONNX Runtime would start 64 threads per run and the quota would throttle them all (the same
reason Go has automaxprocs and the JVM reads the quota).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CGROUP_CPU_MAX", "UsableCpus", "cgroup_cpu_limit", "usable_cpus"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class UsableCpus:
    cores: int
    quota: float | None  # CPUs the cgroup allows; None when unlimited


def cgroup_cpu_limit(cpu_max: str) -> float | None:
    """CPUs a cgroup v2 ``cpu.max`` line allows ("200000 100000" -> 2.0); None if unlimited."""
    quota, _, period = cpu_max.strip().partition(" ")
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max 100000", or anything unexpected: no limit we can honour
        return None
    return q / p if q > 0 and p > 0 else None


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> UsableCpus:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = affinity or os.cpu_count() or 1
    try:
        quota = cgroup_cpu_limit(cpu_max.read_text())
    except OSError:  # no cgroup v2 (or not mounted): the affinity is all we know
        quota = None
    if quota is not None:
        cores = max(1, min(cores, math.ceil(quota)))
    return UsableCpus(cores, quota)
