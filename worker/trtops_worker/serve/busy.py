"""Which of a pod's front ends are computing a batch right now: one byte each in a file they
share (memory-mapped), so a front end can tell whether it runs alone on the pod's cores.

No locks: each front end writes only its own byte and reads them all. Two front ends starting
at the same moment may both see the other (both then run narrow) or one may miss the other
(its wide run shares the cores with one narrow run for that batch); neither blocks anything.
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

    def enter(self) -> bool:
        """Mark this front end busy; True when no other one is."""
        self._map[self._index] = 1
        return self._map[: self._count].count(1) == 1

    def leave(self) -> None:
        self._map[self._index] = 0

    def close(self) -> None:
        self._map.close()
