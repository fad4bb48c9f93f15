"""An operator-wide work queue of engines, with per-key exponential backoff.

Each key (an engine's ``(namespace, name)``) is queued at most once at a time; a key that keeps
failing waits ``base * 2**(failures - 1)`` seconds (capped) before its next try, and success
resets it. The queue also remembers which build Jobs each engine waits on (a Job's events wake
its waiters); all of a key's state is dropped when the engine is deleted, and the Jobs it waits
on are replaced on every reconcile, so a failed build or a deleted engine leaves nothing behind.

asyncio only (no kopf, no clients): the handlers own one instance inside kopf's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["WorkQueue"]

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, base_seconds: float = 1.0, max_seconds: float = 300.0) -> None:
        self.base, self.cap = base_seconds, max_seconds
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._pending: set[K] = set()
        self._failures: dict[K, int] = {}
        self._locks: dict[K, asyncio.Lock] = {}
        self._waits: dict[K, frozenset[Hashable]] = {}  # key -> Jobs it waits on
        self._waiters: dict[Hashable, set[K]] = {}  # Job -> keys waiting on it

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key: K, delay: float = 0.0) -> None:
        """Queue ``key`` (after ``delay`` seconds); a key already queued is not queued twice."""
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.add, key)
        elif key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    async def get(self) -> K:
        key = await self._queue.get()
        self._pending.discard(key)
        return key

    def backoff(self, key: K) -> float:
        """Count a failure of ``key``; returns the seconds to wait before its next try."""
        n = self._failures[key] = self._failures.get(key, 0) + 1
        return float(min(self.cap, self.base * 2.0 ** min(n - 1, 32)))

    def retry(self, key: K, at_least: float = 0.0) -> float:
        """Queue ``key`` again after its backoff (or ``at_least``); returns the delay."""
        delay = max(self.backoff(key), at_least)
        self.add(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """``key`` succeeded: its next failure starts from the base delay again."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def lock(self, key: K) -> asyncio.Lock:
        """One reconcile of a key at a time."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def wait_on(self, key: K, jobs: Iterable[Hashable]) -> None:
        """``key`` now waits on exactly ``jobs`` (replacing what it waited on before)."""
        new = frozenset(jobs)
        for job in self._waits.get(key, frozenset()) - new:
            self._unwait(job, key)
        for job in new:
            self._waiters.setdefault(job, set()).add(key)
        if new:
            self._waits[key] = new
        else:
            self._waits.pop(key, None)

    def waiters(self, job: Hashable) -> frozenset[K]:
        return frozenset(self._waiters.get(job, ()))

    def release(self, key: K) -> None:
        """The engine is gone: drop everything kept for it."""
        self.wait_on(key, ())
        self._failures.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def _unwait(self, job: Hashable, key: K) -> None:
        keys = self._waiters.get(job)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._waiters[job]

    def sizes(self) -> dict[str, int]:
        """How much state is kept (for tests and debugging)."""
        return {
            "pending": len(self._pending),
            "failures": len(self._failures),
            "locks": len(self._locks),
            "waiting": len(self._waits),
            "jobs": len(self._waiters),
        }
