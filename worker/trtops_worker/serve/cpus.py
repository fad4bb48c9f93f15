"""How many cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota.

``os.cpu_count()`` is the node's core count: in a pod limited to 2 CPUs on a 64-core node,
ONNX Runtime would start 64 threads per run and the quota would throttle them all (the same
reason Go has automaxprocs and the JVM reads the quota).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CGROUP_CPU_MAX",
    "CGROUP_V1_CPU",
    "CORES_PER_FRONT_END",
    "WIDE_MEMORY_SHARE",
    "Sizing",
    "UsableCpus",
    "cgroup_cpu_limit",
    "plan_sizing",
    "usable_cpus",
    "wide_threads",
]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# cgroup v1 (nodes still on it): the quota is cpu.cfs_quota_us over cpu.cfs_period_us here
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


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


def _v1_cpu_max(folder: Path) -> str:
    """cgroup v1's CPU quota as a v2 ``cpu.max`` line ("-1 100000": none); OSError if absent."""
    quota = (folder / "cpu.cfs_quota_us").read_text().strip()
    return f"{quota} {(folder / 'cpu.cfs_period_us').read_text().strip()}"


def usable_cpus(
    cpu_max: Path = CGROUP_CPU_MAX, affinity: int | None = None, v1_cpu: Path = CGROUP_V1_CPU
) -> UsableCpus:
    """The cores of ``affinity`` (default: this process's CPU affinity), capped by the cgroup
    quota: v2's ``cpu_max``, else v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in
    ``v1_cpu``."""
    if affinity is None and hasattr(os, "sched_getaffinity"):
        affinity = len(os.sched_getaffinity(0))
    cores = affinity or os.cpu_count() or 1
    quota = None  # no cgroup (or not mounted): the affinity is all we know
    try:
        quota = cgroup_cpu_limit(cpu_max.read_text())
    except OSError:  # no cgroup v2
        with contextlib.suppress(OSError):  # nor v1: the affinity is all we know
            quota = cgroup_cpu_limit(_v1_cpu_max(v1_cpu))
    if quota is not None:
        cores = max(1, min(cores, math.ceil(quota)))
    return UsableCpus(cores, quota)


@dataclass(frozen=True)
class Sizing:
    """How one pod's usable cores are split: ``front_ends`` server processes (one event loop
    each, sharing the ports), each with ``instances`` ONNX Runtime sessions of
    ``intra_op_threads`` threads; a batch runs on one session."""

    front_ends: int
    instances: int  # per front end
    intra_op_threads: int

    @property
    def threads(self) -> int:
        return self.front_ends * self.instances * self.intra_op_threads


# One front end (process, event loop) per this many usable cores. Measured on 16 cores
# (BENCHMARKS.md, "Serving"): 16 front ends of one one-thread instance each served 95% of raw
# ONNX Runtime over binary, 4 front ends of 4 instances 70%, 1 front end of 16 instances 57%:
# instances sharing a process also share its GIL and its event loop, and every batch's Python
# work (merge, split, futures) waits on both.
CORES_PER_FRONT_END = 1


def plan_sizing(
    cores: int,
    *,
    front_ends: int = 0,
    instances: int = 0,
    intra_op_threads: int = 0,
    max_front_ends: int | None = None,
) -> Sizing:
    """Fill ``cores`` usable cores; a non-zero argument is the user's choice and is kept, and
    ``max_front_ends`` caps the default front ends (their cores go to instances instead).

    Defaults: one front end per :data:`CORES_PER_FRONT_END` cores, and the cores shared over
    the front ends as single-thread instances (independent sessions beat one wide session:
    16 one-thread sessions ran 9.9k infer/s where one 16-thread session ran 7.7k). Threads fill
    what the instances leave, and front ends what the instances and threads given leave
    (``--intra-op-threads 4`` on 16 cores: 4 front ends of one 4-thread instance).

    >>> plan_sizing(16)
    Sizing(front_ends=16, instances=1, intra_op_threads=1)
    >>> plan_sizing(16, front_ends=4)
    Sizing(front_ends=4, instances=4, intra_op_threads=1)
    """
    cores = max(1, cores)
    per_instance = intra_op_threads or 1
    front_ends = front_ends or min(
        max(1, cores // (CORES_PER_FRONT_END * (instances or 1) * per_instance)),
        max_front_ends or cores,
    )
    per_front_end = max(1, cores // front_ends)
    instances = instances or max(1, per_front_end // per_instance)
    intra_op_threads = intra_op_threads or max(1, per_front_end // instances)
    return Sizing(front_ends, instances, intra_op_threads)


# The wide sessions' extra weights (one copy per front end) may take at most this share of
# the pod's usable memory when --wide-threads is automatic: turning the wide session on by
# default must not push a pod that fits today over its memory limit.
WIDE_MEMORY_SHARE = 0.25


def wide_threads(
    sizing: Sizing,
    cores: int,
    given: int = -1,
    *,
    weight_bytes: int = 0,
    memory_bytes: int | None = None,
) -> int:
    """Threads of the wide session (a batch that runs while no other front end has had requests
    lately runs on it, serve/backend_onnxruntime.py): ``given`` when >= 0 (none unless wider
    than the instances' threads); -1 is every usable core when the pod is split into one-thread
    front ends (the default sizing on two or more cores) and a second copy of the weights
    (``weight_bytes``) per front end fits in :data:`WIDE_MEMORY_SHARE` of ``memory_bytes``
    (unknown: assumed to fit), else none.

    >>> wide_threads(plan_sizing(16), 16)
    16
    >>> wide_threads(plan_sizing(16, front_ends=1), 16), wide_threads(plan_sizing(1), 1)
    (0, 0)
    >>> wide_threads(plan_sizing(16), 16, weight_bytes=600 << 20, memory_bytes=32 << 30)
    0
    """
    if given >= 0:  # no wider than the instance's own threads: a second session for nothing
        return given if given > max(1, sizing.intra_op_threads) else 0
    one_thread_front_ends = sizing.instances == 1 and sizing.intra_op_threads == 1
    if sizing.front_ends < 2 or not one_thread_front_ends:
        return 0
    if memory_bytes is not None and sizing.front_ends * weight_bytes > (
        WIDE_MEMORY_SHARE * memory_bytes
    ):
        return 0
    return cores
