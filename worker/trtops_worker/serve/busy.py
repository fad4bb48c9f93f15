"""Which of a pod's front ends have had requests lately: one 8-byte slot each in a file they
share (memory-mapped), so a front end can tell whether it has the pod's cores to itself.

A slot holds :data:`BUSY` from the front end's first request in progress to its last one's
answer, and then the time it went idle (``CLOCK_MONOTONIC`` in ns: one clock for every process
of the host). A front end is *alone* when every other one has been idle for :data:`QUIET_S`
or longer, not merely at this instant: under load a front end whose few connections all fit
one batch is idle for a round trip between batches, and a wide run that starts in that gap
holds every core while the others' next batches wait for them (run D, 16 cores, 64 px:
-9% at saturation with under 1% of batches wide; 2 cores, 64 px: 88.8% -> 61.1% of raw). A
lone client's front end finds the others idle far longer than that.

No locks: each front end writes only its own slot (an aligned 8-byte store, whole on every
64-bit CPU) and reads them all; one that misses another's start by a moment runs one batch
wide beside it, and nothing waits.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["BUSY", "QUIET_S", "BusyBoard"]

BUSY = np.iinfo(np.int64).max
"""A slot's value while its front end has requests in progress."""

QUIET_S = 0.01
"""Seconds every other front end must have been idle for a front end to be alone: longer than
the gaps between batches under load (a round trip, well under 1 ms at saturation in run D),
shorter than a person's or a sporadic client's pause between requests."""

_SLOT = 8  # bytes: one int64


class BusyBoard:
    """``count`` front ends' slots in ``path`` (created, or opened if another made it); this
    process is front end ``index``. A new file's slots read idle since the clock's start."""

    def __init__(self, path: Path, index: int, count: int, quiet_s: float = QUIET_S) -> None:
        if not 0 <= index < count:
            raise ValueError(f"front end {index} is not one of {count}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < count * _SLOT:
                os.ftruncate(fd, count * _SLOT)  # zeros; a second one to the same size: no-op
            self._map = mmap.mmap(fd, count * _SLOT)
        finally:
            os.close(fd)
        self._slots = np.frombuffer(self._map, dtype=np.int64, count=count)
        self._others = np.arange(count) != index
        self._index = index
        self._quiet_ns = int(quiet_s * 1e9)

    def mark(self, busy: bool, now_ns: int | None = None) -> None:
        """This front end has requests in progress (``busy``), or none since ``now_ns``
        (``time.monotonic_ns()`` when not given)."""
        if busy:
            self._slots[self._index] = BUSY
        else:
            self._slots[self._index] = time.monotonic_ns() if now_ns is None else now_ns

    def alone(self, now_ns: int | None = None) -> bool:
        """True when every other front end has been idle for the quiet time by ``now_ns``
        (``time.monotonic_ns()`` when not given)."""
        if not self._others.any():
            return True
        latest = int(self._slots[self._others].max())
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return latest <= now_ns - self._quiet_ns

    def close(self) -> None:
        del self._slots  # the numpy view pins the map's buffer
        self._map.close()
