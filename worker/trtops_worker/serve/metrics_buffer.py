"""Serving observations kept in plain numbers between flushes into prometheus_client.

In prometheus_client's multiprocess mode (several front ends, serve/frontends.py) every ``inc``
and ``observe`` writes a file the front ends share, under a lock: ~1-2 us each, ~7 per request.
:class:`Pending` adds them up instead; ``ServeMetrics.flush`` applies them to the series in one
step per series and bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

__all__ = ["HistogramBuffer", "Pending"]


class HistogramBuffer:
    """Observations of one histogram: a count per bucket (``upper_bounds`` as the histogram
    has them, ``+Inf`` last; an observation goes to the first bound it does not exceed) and
    the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, upper_bounds: Sequence[float]) -> None:
        self._bounds = list(upper_bounds)
        self.counts = [0] * len(self._bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def apply(self, child: Any) -> None:
        """Add to a prometheus_client histogram child. Its per-bucket values (``_buckets``,
        not cumulative) and ``_sum`` are not public API: tests/serve/test_metrics_buffer.py
        checks the exposition against ``observe``'s, sample for sample."""
        if not any(self.counts):
            return
        for bucket, count in zip(child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)
        child._sum.inc(self.sum)


class Pending:
    """Everything observed on the current series since the last flush."""

    __slots__ = (
        "batch_size",
        "compute_cpu",
        "compute_duration",
        "inflight",
        "queue_depth",
        "queue_duration",
        "request_duration",
        "requests",
    )

    def __init__(self, latency_bounds: Sequence[float], batch_bounds: Sequence[float]) -> None:
        self.requests: dict[str, int] = {}
        self.inflight = 0  # the change since the last flush
        self.queue_depth: int | None = None  # the latest
        self.request_duration = HistogramBuffer(latency_bounds)
        self.queue_duration = HistogramBuffer(latency_bounds)
        self.compute_duration = HistogramBuffer(latency_bounds)
        self.batch_size = HistogramBuffer(batch_bounds)
        self.compute_cpu = 0.0

    def apply(self, series: Any) -> None:
        """Add everything to ``series`` (metrics._Series: prometheus_client children)."""
        for outcome, count in self.requests.items():
            series.requests[outcome].inc(count)
        if self.inflight:
            series.inflight.inc(self.inflight)
        if self.queue_depth is not None:
            series.queue_depth.set(self.queue_depth)
        self.request_duration.apply(series.request_duration)
        self.queue_duration.apply(series.queue_duration)
        self.compute_duration.apply(series.compute_duration)
        self.batch_size.apply(series.batch_size)
        if self.compute_cpu:
            series.compute_cpu.inc(self.compute_cpu)
