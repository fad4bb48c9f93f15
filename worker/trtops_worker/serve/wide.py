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
from collections.abc import Callable
from pathlib import Path

import onnx

from .busy import BusyBoard
from .cpus import Sizing, wide_threads
from .frontends import FRONT_END_ENV, MULTIPROC_ENV, is_front_end

__all__ = [
    "CGROUP_MEMORY_MAX",
    "CGROUP_V1_MEMORY_LIMIT",
    "MEMINFO",
    "POD_MEMORY_ENV",
    "WEIGHT_BYTES_ENV",
    "plan_wide",
    "share_readings",
    "usable_memory",
    "weight_bytes",
    "wide_flag_error",
]

log = logging.getLogger(__name__)

# The supervisor's readings for its front ends (share_readings); empty: unknown
POD_MEMORY_ENV = "TRTOPS_POD_MEMORY_BYTES"
WEIGHT_BYTES_ENV = "TRTOPS_MODEL_WEIGHT_BYTES"

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


def wide_flag_error(given: int, sizing: Sizing, front_ends_flag: int) -> str | None:
    """Why ``--wide-threads given`` cannot be served with ``sizing`` (the message for the
    user, with the way out), or None."""
    if given < -1:
        return "--wide-threads must be >= -1 (-1: automatic, 0: none)"
    if given > 1 and sizing.instances > 1:
        # A front end's batches run one at a time only with one instance; two lone batches on
        # two instances would both take every core. --instances 1 alone would leave one front
        # end, which gets no wide session either.
        also = " (and --front-ends 2 or more)" if front_ends_flag == 1 else ""
        return (
            f"--wide-threads needs one instance per front end (this pod's sizing gives"
            f" {sizing.instances}); set --instances 1 or --wide-threads 0{also}"
        )
    return None


def share_readings(model: Path) -> None:
    """Read the pod's usable memory and the model's weight bytes once, in the supervisor, for
    every front end it starts: each reading MemAvailable on its own could land on both sides of
    the memory rule, and each would parse the model again. An unreadable model is left to the
    front ends (their loader says why, in the operator's words)."""
    os.environ[POD_MEMORY_ENV] = str(usable_memory() or "")
    with contextlib.suppress(OSError):
        os.environ[WEIGHT_BYTES_ENV] = str(weight_bytes(model))


def _shared_or(name: str, read: Callable[[], int | None]) -> int | None:
    shared = os.environ.get(name)
    if shared is None:  # one process, or started by hand: read it here
        return read()
    return int(shared) if shared.isdigit() else None


def plan_wide(
    sizing: Sizing, cores: int, given: int, model: Path, backend: str
) -> tuple[int, BusyBoard | None]:
    """This front end's wide session threads (0: none) and the board it shares with the other
    front ends; ``given`` is ``--wide-threads`` (-1: automatic, cpus.wide_threads). Only an
    ONNX Runtime front end of several has one (one process has no one to share the cores
    with). Says once for the pod (front end 0) what was chosen and why."""
    first = os.environ.get(FRONT_END_ENV, "0") == "0"
    if given > 1 and first:  # forced, yet no wide session: say why
        why = (
            f"the {backend} backend has no wide session"
            if backend != "onnxruntime"
            else "a wide session needs two or more front ends (this pod has one)"
            if sizing.front_ends < 2
            else f"no wider than the instances' {sizing.intra_op_threads} threads"
            if given <= sizing.intra_op_threads
            else None
        )
        if why is not None:
            log.warning("--wide-threads %d ignored: %s", given, why)
    if backend != "onnxruntime" or not is_front_end():
        return 0, None
    index = int(os.environ[FRONT_END_ENV])
    try:
        weights = _shared_or(WEIGHT_BYTES_ENV, lambda: weight_bytes(model)) or 0
    except OSError:  # no model there: loading it fails next, in the words the operator reads
        return 0, None
    memory = _shared_or(POD_MEMORY_ENV, usable_memory)
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
