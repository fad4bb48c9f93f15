"""The operator's work queue: each engine queued once, failures back off per engine, and nothing
is kept for an engine that is gone or no longer waits on a build."""

from __future__ import annotations

import asyncio

from trtops_operator.workqueue import WorkQueue


def test_failures_back_off_exponentially_per_key_and_success_resets() -> None:
    async def run() -> None:
        q: WorkQueue[str] = WorkQueue(base_seconds=1, max_seconds=10)
        assert [q.backoff("a") for _ in range(5)] == [1, 2, 4, 8, 10]
        assert q.backoff("b") == 1  # another engine's failures do not slow this one
        q.forget("a")
        assert q.backoff("a") == 1

    asyncio.run(run())


def test_a_key_is_queued_once_until_taken() -> None:
    async def run() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert [await q.get(), await q.get()] == ["a", "b"]
        assert len(q) == 0
        q.add("a")  # taken: may be queued again
        assert await q.get() == "a"

    asyncio.run(run())


def test_retry_waits_at_least_the_hint() -> None:
    async def run() -> None:
        q: WorkQueue[str] = WorkQueue(base_seconds=0.01, max_seconds=1)
        assert q.retry("a", at_least=0.05) == 0.05
        assert len(q) == 0  # not yet
        assert await asyncio.wait_for(q.get(), 1) == "a"

    asyncio.run(run())


def test_waiting_state_is_replaced_each_pass_and_released_on_delete() -> None:
    async def run() -> None:
        q: WorkQueue[tuple[str, str]] = WorkQueue()
        e1, e2 = ("ns", "e1"), ("ns", "e2")
        q.wait_on(e1, [("ns", "job-a")])
        q.wait_on(e2, [("ns", "job-a"), ("ns", "job-b")])
        assert q.waiters(("ns", "job-a")) == {e1, e2}
        q.wait_on(e1, [])  # its build failed (or finished): it waits on nothing
        assert q.waiters(("ns", "job-a")) == {e2}
        q.backoff(e2)
        async with q.lock(e2):
            pass
        q.release(e2)  # deleted
        assert q.waiters(("ns", "job-b")) == frozenset()
        assert q.sizes() == {"pending": 0, "failures": 0, "locks": 0, "waiting": 0, "jobs": 0}

    asyncio.run(run())
