"""Dynamic batching: a bounded queue and the loop dispatching it.

Requests queue; when the backend is free the batcher takes the oldest request plus every queued
request with the same trailing shapes and dtypes, up to ``max_batch_size`` rows, concatenates
them along the batch dimension, runs them in a worker thread (the event loop stays free) and
splits the outputs back. It dispatches early instead of sitting out ``max_queue_delay`` when
nothing else is on its way (so a lone client pays no batching delay), and never later than the
oldest request's delay. A full queue rejects at once (:class:`Overloaded`); a request that waits
longer than its timeout gets :class:`RequestTimeout`.

The rules (which requests merge, when a batch leaves, merge and split) are pure functions in
serve/batching_rules.py, re-exported here; running a batch and answering its requests is
serve/batch_runs.py; this module is the queue and the loop between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .batch_runs import BatchObserver, BatchRunner, Queued, deliver, expire
from .batching_rules import (
    Key,
    Tensors,
    as_serve_error,
    batch_key,
    batch_limit,
    decide,
    merge,
    split,
    take_batch,
)
from .errors import Overloaded, RequestTimeout

__all__ = [
    "BatchObserver",
    "Batcher",
    "Key",
    "as_serve_error",
    "batch_key",
    "batch_limit",
    "decide",
    "merge",
    "split",
    "take_batch",
]

# Batches run on the event loop while recent runs (a moving average) take at most this long;
# longer ones go to a worker thread. A thread hand-off costs ~0.1-0.5 ms, under 1% of a 100 ms
# run, and a run on the loop delays everything else on it (the kubelet's probes give up after
# 1 s by default). The benchmark models' batches run 15-61 ms on one thread: on the loop.
ON_LOOP_MAX_RUN_S = 0.1


# How late past its deadline a request may be failed (the sweeper's period).
DEADLINE_SWEEP_S = 0.02


class _Arrival(contextlib.AbstractContextManager[None]):
    """Batcher.arriving's context: a counter, not a generator (~1.5 us less per use, twice
    per request)."""

    __slots__ = ("_batcher",)

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher

    def __enter__(self) -> None:
        self._batcher._arrivals += 1

    def __exit__(self, *_: object) -> None:
        self._batcher._arrivals -= 1
        self._batcher._wakeup.set()


class Batcher:
    """Queue + dispatch loop around a synchronous ``run(inputs) -> outputs`` function."""

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        batchable: bool,
        instances: int = 1,
        observer: BatchObserver | None = None,
        on_loop: bool = False,
        on_loop_max_run_s: float = ON_LOOP_MAX_RUN_S,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._runner = BatchRunner(run, observer, cpu_clock)
        self.max_batch_size = max(1, max_batch_size)
        self._delay = max(0, max_queue_delay_us) / 1e6
        self.max_queue_size = max(1, max_queue_size)
        self.batching = batchable and self.max_batch_size > 1
        self._observer = observer
        self._queue: deque[Queued] = deque()
        self._arrivals = 0
        self._wakeup = asyncio.Event()
        # Batches on the backend at once, each in its own worker thread (Triton's instance
        # count): with one-thread ORT runs, no run waits on a barrier for a preempted thread.
        self.instances = max(1, instances)
        # One instance computing on the CPU: its batches run right here, on the event loop's
        # thread. The loop could not feed a second batch anyway, and a worker thread cost two
        # thread wake-ups per batch (to it, and back to the loop): at concurrency 1 they were
        # most of the latency over a bare ONNX Runtime call. Not with a GPU, whose runs leave
        # the CPU free to parse the next requests meanwhile; and only while runs are short
        # (ON_LOOP_MAX_RUN_S): a run on the loop holds up everything else on it, probes too.
        self.on_loop = on_loop and self.instances == 1
        self._on_loop_max_run_s = on_loop_max_run_s
        self._executor = ThreadPoolExecutor(
            max_workers=self.instances, thread_name_prefix="trtops-infer"
        )
        self._computing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._arrival = _Arrival(self)
        self._live: set[Queued] = set()  # submitted, not answered: what the sweeper checks
        self._has_live = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    # -- submission ------------------------------------------------------------------------

    def arriving(self) -> contextlib.AbstractContextManager[None]:
        """Held by a transport while it reads and decodes a request, so the batcher waits for it."""
        return self._arrival

    async def submit(
        self, inputs: Tensors, timeout_s: float, key: tuple[Key | None, int] | None = None
    ) -> dict[str, np.ndarray]:
        """``inputs``' outputs, once run in a batch; ``key``: their :func:`batch_key` if the
        caller has it already. Overloaded when the queue is full, RequestTimeout past
        ``timeout_s``, the backend's error as a ServeError."""
        if len(self._queue) >= self.max_queue_size:
            raise Overloaded(f"queue full ({self.max_queue_size} requests waiting); retry later")
        if not self.batching:
            key = None, 1
        elif key is None:
            key = batch_key(inputs)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        item = Queued(inputs, key[0], key[1], now, now + timeout_s, future)
        self._queue.append(item)
        if self._observer:
            self._observer.queued(len(self._queue))
        self._wakeup.set()
        # Deadlines are kept by one sweeper (_expire_late), not a timer per request (a timer
        # cost ~3 us of the loop per request): a timed-out request is skipped if still queued,
        # its result dropped if computing.
        self._live.add(item)
        self._has_live.set()
        try:
            return await future
        finally:
            self._live.discard(item)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name="trtops-batcher")
        self._sweeper = loop.create_task(self._expire_late(), name="trtops-deadlines")

    async def _expire_late(self) -> None:
        """Fail requests past their deadline, queued or computing, within DEADLINE_SWEEP_S;
        asleep while no request is waiting."""
        while True:
            await self._has_live.wait()
            await asyncio.sleep(DEADLINE_SWEEP_S)
            now = time.monotonic()
            for item in list(self._live):
                if item.deadline <= now:
                    expire(item.future, item.deadline - item.enqueued)
            if not self._live:
                self._has_live.clear()

    async def close(self) -> None:
        """Finish every queued request, then stop the loop and the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._executor.shutdown(wait=True)

    # -- dispatch loop ---------------------------------------------------------------------

    def _drop_dead(self) -> None:
        now = time.monotonic()
        while self._queue and (self._queue[0].future.done() or self._queue[0].deadline <= now):
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RequestTimeout("timed out in the queue"))

    async def _wait_for_work(self) -> bool:
        while True:
            self._drop_dead()
            if self._queue:
                return True
            if self._closing:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()

    def _queued_rows(self) -> int:
        """Rows queued that could join the oldest request's batch (a full batch if none can)."""
        first = self._queue[0]
        if first.key is None:
            return self.max_batch_size
        return sum(i.rows for i in self._queue if i.key == first.key)

    async def _form_batch(self) -> None:
        """Let the batch grow while that is worth it (see :func:`decide`)."""
        idle_rounds = 0
        deadline = self._queue[0].enqueued + self._delay
        while True:
            before = len(self._queue)
            action = decide(
                queued_rows=self._queued_rows(),
                max_batch_size=self.max_batch_size,
                now=time.monotonic(),
                deadline=deadline,
                arrivals=self._arrivals,
                idle_rounds=idle_rounds,
            )
            if action == "dispatch" or self._closing:
                return
            if action == "wait":
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wakeup.wait(), max(0.0, deadline - time.monotonic())
                    )
            else:
                await asyncio.sleep(0)
            self._drop_dead()
            if not self._queue:
                return
            idle_rounds = 0 if len(self._queue) != before else idle_rounds + 1

    async def _settle(self) -> None:
        """Before a run blocks the event loop: let the requests already received (and
        connections already accepted) reach the queue, until it stops growing for two rounds,
        so that they are queued, or refused when it is full, rather than left unread."""
        idle_rounds = 0
        while idle_rounds < 2 and not self._closing:
            before = len(self._queue)
            await asyncio.sleep(0)
            self._drop_dead()
            idle_rounds = 0 if len(self._queue) != before else idle_rounds + 1

    def _ahead_ready(self) -> bool:
        """Every instance is busy, but a full batch is queued and none is waiting on the executor.

        Such a batch cannot grow any more, so it goes to the executor's queue now and an instance
        starts it the moment it finishes its current one, without a round trip through a busy
        event loop (at saturation that round trip left each instance idle ~7% of the time).
        """
        return (
            self.batching
            and len(self._computing) == self.instances
            and self._queued_rows() >= self.max_batch_size
        )

    async def _loop(self) -> None:
        while await self._wait_for_work():
            while len(self._computing) >= self.instances and not self._ahead_ready():
                # every instance busy: the queue grows until one is free or a full batch waits
                # (arrivals and finished batches both set the wakeup)
                self._wakeup.clear()
                await self._wakeup.wait()
                self._drop_dead()
                if not self._queue:
                    break
            if not self._queue:
                continue
            here = self.on_loop and self._runner.run_s <= self._on_loop_max_run_s
            if self.batching:
                await self._form_batch()
            elif here:
                await self._settle()
            if not self._queue:
                continue
            limit = batch_limit(
                self._queued_rows(), self.instances - len(self._computing), self.max_batch_size
            )
            picked = take_batch([(i.key, i.rows) for i in self._queue], limit)
            batch = [self._queue[i] for i in picked]
            for i in reversed(picked):
                del self._queue[i]
            if self._observer:
                self._observer.queued(len(self._queue))
            if here:
                deliver(batch, self._runner.results(batch))
                await asyncio.sleep(0)  # the answers leave, and requests received join the queue
                continue
            task = asyncio.get_running_loop().create_task(self._compute(batch))
            self._computing.add(task)
            task.add_done_callback(self._computed)
        if self._computing:
            await asyncio.wait(self._computing)

    def _computed(self, task: asyncio.Task[None]) -> None:
        self._computing.discard(task)
        self._wakeup.set()

    def note_run(self, seconds: float) -> None:
        """One run took ``seconds`` (a warm-up run seeding the average)."""
        self._runner.note_run(seconds)

    async def _compute(self, batch: list[Queued]) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._runner.results, batch)
        deliver(batch, results)

    def describe(self) -> dict[str, Any]:
        return {
            "dynamic_batching": self.batching,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_microseconds": int(self._delay * 1e6),
            "max_queue_size": self.max_queue_size,
            "instances": self.instances,
        }
