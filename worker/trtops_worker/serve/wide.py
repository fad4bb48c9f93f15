"""Whether this front end gets a wide ONNX Runtime session (a batch that starts once the other
front ends are idle runs on every core, serve/busy.py): the flag, the pod's sizing, and whether
a second copy of the weights in every front end fits the pod's memory.

A second session holds its own copy of the weights: ONNX Runtime's full optimisations re-lay
convolution weights out per session (measured here with a 627 MB model: +649 MB for the second
session; shared initializers, ``SessionOptions.add_initializer``, saved nothing at
``ORT_ENABLE_ALL``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import onnx

from .busy import BusyBoard
from .cpus import Sizing, wide_threads
from .frontends import FRONT_END_ENV, MULTIPROC_ENV, is_front_end

__all__ = [
    "CGROUP_MEMORY_MAX",
    "CGROUP_V1_MEMORY_LIMIT",
    "MEMINFO",
    "plan_wide",
    "usable_memory",
    "weight_bytes",
]

log = logging.getLogger(__name__)

CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
# cgroup v1 (nodes still on it: older distributions, kubelet's cgroupfs v1): the same limit
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_V1_UNLIMITED = 1 << 62  # bytes: v1 says "no limit" as LONG_MAX rounded down to a page
MEMINFO = Path("/proc/meminfo")
_GRAPH_ONLY = 64 << 20  # bytes: a model file past this holds its weights itself


def usable_memory(
    memory_max: Path = CGROUP_MEMORY_MAX,
    meminfo: Path = MEMINFO,
    v1_limit: Path = CGROUP_V1_MEMORY_LIMIT,
) -> int | None:
    """Bytes: the cgroup memory limit (what ``resources.limits.memory`` sets; v2's
    ``memory.max``, else v1's ``memory.limit_in_bytes``), else the node's ``MemAvailable``;
    None when none can be read."""
    for limit in (memory_max, v1_limit):
        try:
            text = limit.read_text().strip()
        except OSError:  # not this cgroup version
            continue
        if text.isdigit() and int(text) < _V1_UNLIMITED:  # "max" / v1's huge value: none set
            return int(text)
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def weight_bytes(model: Path) -> int:
    """Bytes of an ONNX model's file plus its external data files (big models keep their
    weights beside the graph, the ONNX external data format). Raises OSError if the file
    cannot be read; a file that is not ONNX counts as its own size."""
    size = model.stat().st_size
    if size > _GRAPH_ONLY:  # the weights are inside: no need to parse it (at every start)
        return size
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # not a parseable model: the loader says so later, in its own words
        return size
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in locations:
        # missing: loading the model fails with ONNX Runtime's message
        with contextlib.suppress(OSError):
            size += (model.parent / location).stat().st_size
    return size


def plan_wide(sizing: Sizing, cores: int, given: int, model: Path) -> tuple[int, BusyBoard | None]:
    """This front end's wide session threads (0: none) and the board it shares with the other
    front ends; ``given`` is ``--wide-threads`` (-1: automatic, cpus.wide_threads). Only a
    front end of several has one (one process has no one to share the cores with)."""
    if not is_front_end():
        return 0, None
    index = int(os.environ[FRONT_END_ENV])
    try:
        weights = weight_bytes(model)
    except OSError:  # no model there: loading it fails next, in the words the operator reads
        return 0, None
    memory = usable_memory()
    wide = wide_threads(sizing, cores, given, weight_bytes=weights, memory_bytes=memory)
    if not wide:
        if index == 0 and given == -1:
            if wide_threads(sizing, cores) > 0:
                log.info(
                    "no wide session: a second copy of the weights (%d MB) in %d front ends"
                    " would take over a quarter of the pod's memory (%d MB); --wide-threads N"
                    " forces it",
                    weights >> 20,
                    sizing.front_ends,
                    (memory or 0) >> 20,
                )
            else:
                log.info(
                    "no wide session: it needs front ends of one one-thread instance each"
                    " (these have %d instances of %d threads)",
                    sizing.instances,
                    sizing.intra_op_threads,
                )
        return 0, None
    if index == 0:
        why = f"--wide-threads {given}"
        if given == -1:
            why = "automatic: " + (
                f"a second copy of the weights ({weights >> 20} MB) in {sizing.front_ends}"
                f" front ends fits a quarter of the pod's memory ({memory >> 20} MB)"
                if memory is not None
                else "the pod's memory is unknown"
            )
        log.info(
            "wide session: %d threads once the other front ends are idle (%s)%s",
            wide,
            why,
            f"; more than the {cores} usable cores" if wide > cores else "",
        )
    return wide, BusyBoard(Path(os.environ[MULTIPROC_ENV]) / "busy", index, sizing.front_ends)
