"""Running one batch: time it, count it, and when it fails as a whole find the request(s)
failing on their own (:class:`BatchRunner`); then answer each request's future
(:func:`deliver`). serve/batching.py's Batcher queues the requests and calls these, on the event
loop's thread or a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .batching_rules import Key, Tensors, as_serve_error, merge, split
from .errors import DeviceError, RequestTimeout, ServeError

__all__ = ["BatchObserver", "BatchRunner", "Queued", "Result", "deliver", "expire"]

Result = dict[str, np.ndarray] | ServeError


class BatchObserver(Protocol):
    def queued(self, depth: int) -> None: ...
    def dispatched(self, waits: Sequence[float], rows: int) -> None: ...
    def computed(self, seconds: float, requests: int, rows: int, cpu_seconds: float) -> None: ...


@dataclass(eq=False, slots=True)
class Queued:
    """One request submitted to the batcher: its inputs, batch key and rows, when it was
    queued and by when it must be answered (``time.monotonic`` seconds), and its future."""

    inputs: Tensors
    key: Key | None
    rows: int
    enqueued: float
    deadline: float
    future: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)


def expire(future: asyncio.Future[Any], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(f"no result within {timeout_s * 1000:.0f} ms"))


class BatchRunner:
    """A synchronous ``run(inputs) -> outputs`` applied to batches: each request's outputs or
    error, the observer told of queue and compute time, and a moving average of run seconds
    (:attr:`run_s`, which decides whether the next batch may run on the event loop)."""

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        observer: BatchObserver | None,
        cpu_clock: Callable[[], float],
    ) -> None:
        self._run = run
        self._observer = observer
        self._cpu_clock = cpu_clock  # inference CPU seconds, read around each run
        self.run_s = 0.0  # recent runs' seconds (a moving average)

    def note_run(self, seconds: float) -> None:
        """One run took ``seconds`` (a batch, or a warm-up run seeding the average)."""
        self.run_s = seconds if self.run_s == 0 else 0.8 * self.run_s + 0.2 * seconds

    def _timed_run(
        self, batch: Sequence[Queued], inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Runs in a worker thread, or on the loop. Queue time ends here, when the run starts
        (a batch sent ahead waits in the executor: that is queueing too); compute time is the
        run alone."""
        if self._observer:
            now = time.monotonic()
            self._observer.dispatched([now - i.enqueued for i in batch], sum(i.rows for i in batch))
        started, cpu = time.perf_counter(), self._cpu_clock()
        try:
            return self._run(inputs)
        finally:
            seconds = time.perf_counter() - started
            self.note_run(seconds)
            if self._observer:
                self._observer.computed(
                    seconds,
                    len(batch),
                    sum(i.rows for i in batch),
                    self._cpu_clock() - cpu,
                )

    def _bisect(self, batch: Sequence[Queued]) -> list[Result]:
        """Runs in a worker thread after ``batch`` failed as a whole: run each half, and bisect
        a half that fails again, so that only the request(s) failing on their own fail and every
        other one gets the answer of a run without them. One bad request among n costs about
        2·log2(n) extra runs; a batch failing throughout costs 2n - 2, each member getting the
        error it caused alone."""
        results: list[Result] = []
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            try:
                outputs = self._run(merge([i.inputs for i in part]))
                results += split(outputs, [i.rows for i in part])
            except Exception as e:  # this part holds a culprit: find it, or it is this request
                results += [as_serve_error(e)] if len(part) == 1 else self._bisect(part)
        return results

    def results(self, batch: Sequence[Queued]) -> Sequence[Result]:
        """Run ``batch`` on this thread: each request's outputs or error."""
        try:
            outputs = self._timed_run(batch, merge([i.inputs for i in batch]))
            return split(outputs, [i.rows for i in batch])
        except Exception as e:
            if len(batch) == 1 or isinstance(e, DeviceError):  # a dead device fails them all
                return [as_serve_error(e)] * len(batch)
            return self._bisect(batch)


def deliver(batch: Sequence[Queued], results: Sequence[Result]) -> None:
    """Answer each request's future with its result (an error: raised), or fail it if its
    deadline passed meanwhile; a future already done (expired, cancelled) is left alone."""
    now = time.monotonic()
    for item, result in zip(batch, results, strict=True):
        if item.future.done():
            continue
        if item.deadline <= now:  # its timer could not fire while the run held the loop
            expire(item.future, item.deadline - item.enqueued)
        elif isinstance(result, ServeError):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)
