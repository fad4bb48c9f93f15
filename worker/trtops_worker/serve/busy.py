"""Which of a pod's front ends have requests in progress: one byte each in a file they share
(memory-mapped), so a front end can tell whether it has the pod's cores to itself.

A front end is busy from its first request in progress to its last one's answer, not only while
it computes: under load the others always have requests queued, so none is ever alone (a flag
for computing alone was clear between any two batches, and on 2 cores a front end ran wide
about half the time at saturation, beside the other's run). No locks: each front end writes
only its own byte and reads them all; one that misses another's start by a moment runs one
batch wide beside it, and nothing waits.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = ["BusyBoard"]


class BusyBoard:
    """``count`` front ends' busy flags in ``path`` (created, or opened if another made it);
    this process is front end ``index``."""

    def __init__(self, path: Path, index: int, count: int) -> None:
        if not 0 <= index < count:
            raise ValueError(f"front end {index} is not one of {count}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < count:
                os.ftruncate(fd, count)  # zeros; a second ftruncate to the same size is a no-op
            self._map = mmap.mmap(fd, count)
        finally:
            os.close(fd)
        self._index = index
        self._count = count

    def mark(self, busy: bool) -> None:
        """This front end has requests in progress (``busy``), or none any more."""
        self._map[self._index] = 1 if busy else 0

    def alone(self) -> bool:
        """True when no other front end has requests in progress."""
        return self._map[: self._count].count(1) <= self._map[self._index]

    def close(self) -> None:
        self._map.close()
