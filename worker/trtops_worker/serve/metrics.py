"""Prometheus metrics for the serving path, on their own registry and port.

Names and labels are a contract: canary analysis and the dashboards query them. Latencies are
histograms (not Triton-style cumulative counters) so a fleet p99 comes from
``histogram_quantile(0.99, sum by (le) (rate(trtops_request_duration_seconds_bucket[1m])))``.
Every series carries ``model``, ``revision``, ``precision`` and ``backend``; after a CPU fallback
new series appear with ``backend="onnxruntime"`` and ``trtops_backend_fallback`` is 1.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .metrics_buffer import Pending
from .statistics import Statistics

__all__ = ["FLUSH_S", "LATENCY_BUCKETS", "Labels", "ServeMetrics"]

log = logging.getLogger(__name__)

# 0.5 ms .. 10 s, roughly x2 steps with extra resolution where CPU/GPU inference lands.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BOUNDS = (*LATENCY_BUCKETS, float("inf"))  # prometheus_client's: +Inf last
_BATCH_BOUNDS = (*map(float, BATCH_BUCKETS), float("inf"))
# Observations wait in plain numbers at most this long before they reach the series (and the
# files several front ends share); an idle server moves them at once.
FLUSH_S = 0.5
LABELS = ("model", "revision", "precision", "backend")
# cancelled: the client went away or its deadline passed first (a gRPC cancel or timeout); not
# the server's error, so no error rate counts it
OUTCOMES = ("success", "client_error", "server_error", "rejected", "cancelled")


@dataclass(frozen=True)
class Labels:
    model: str
    revision: str
    precision: str
    backend: str

    def values(self) -> tuple[str, str, str, str]:
        return (self.model, self.revision, self.precision, self.backend)


@dataclass(frozen=True)
class _Series:
    """The labelled children of one backend's series (prometheus_client's types are untyped)."""

    labels: Labels
    requests: dict[str, Any]
    request_duration: Any
    queue_duration: Any
    compute_duration: Any
    compute_cpu: Any
    wide_runs: Any
    batch_size: Any
    inflight: Any
    queue_depth: Any


class ServeMetrics:
    """Every serving metric; the ``backend`` label follows the backend in use right now."""

    def __init__(self, labels: Labels, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._labels = labels
        r = self.registry
        # Before the metrics, so a scrape of this registry flushes first and sees everything.
        r.register(_FlushFirst(self))
        self.request_duration = Histogram(
            "trtops_request_duration_seconds",
            "Inference request latency, received to answered.",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_duration = Histogram(
            "trtops_queue_duration_seconds",
            "Time a request waited in the batching queue.",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.compute_duration = Histogram(
            "trtops_compute_duration_seconds",
            "Backend time per executed batch.",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.compute_cpu = Counter(
            "trtops_compute_cpu_seconds",
            "CPU time of the threads calling the backend while it ran (with one-thread ONNX"
            " Runtime instances: all of the inference CPU; the rest of the process's CPU is"
            " serving).",
            LABELS,
            registry=r,
        )
        self.wide_runs = Counter(
            "trtops_wide_runs",
            "Batches run on the wide ONNX Runtime session (all the pod's threads) because no"
            " other front end was computing.",
            LABELS,
            registry=r,
        )
        self.requests = Counter(
            "trtops_requests", "Inference requests by outcome.", (*LABELS, "outcome"), registry=r
        )
        self.batch_size = Histogram(
            "trtops_batch_size",
            "Rows per executed batch.",
            LABELS,
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        # multiprocess_mode: how several front ends' gauges combine (serve/frontends.py); it
        # only applies in prometheus_client's multiprocess mode.
        self.inflight = Gauge(
            "trtops_inflight_requests",
            "Inference requests being handled.",
            LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "trtops_queue_depth",
            "Requests waiting in the batching queue.",
            LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.fallback = Gauge(
            "trtops_backend_fallback",
            "1 when serving on the CPU fallback instead of the requested backend.",
            LABELS,
            registry=r,
            multiprocess_mode="livemax",
        )
        self._gpu: _GpuCollector | None = None
        self.statistics = Statistics()
        self._lock = threading.Lock()
        self._pending = self._new_pending()
        self._flusher: asyncio.Task[None] | None = None
        self.set_backend(labels.backend, fallback=False)

    @property
    def labels(self) -> Labels:
        return self._labels

    def set_backend(self, backend: str, *, fallback: bool) -> None:
        """Switch the ``backend`` label of new observations (CPU fallback)."""
        if hasattr(self, "_series"):
            self.flush()  # what was observed so far belongs to the old series
        old = self._labels
        self._labels = Labels(old.model, old.revision, old.precision, backend)
        v = self._labels.values()
        if backend != old.backend:
            self.fallback.labels(*old.values()).set(0)
            self.queue_depth.labels(*old.values()).set(0)
        self.fallback.labels(*v).set(1 if fallback else 0)
        # Every series is created up front (a rate over a missing series is "no data") and its
        # child kept, so the per-request path does no label lookups.
        self._series = _Series(
            labels=self._labels,
            requests={outcome: self.requests.labels(*v, outcome) for outcome in OUTCOMES},
            request_duration=self.request_duration.labels(*v),
            queue_duration=self.queue_duration.labels(*v),
            compute_duration=self.compute_duration.labels(*v),
            compute_cpu=self.compute_cpu.labels(*v),
            wide_runs=self.wide_runs.labels(*v),
            batch_size=self.batch_size.labels(*v),
            inflight=self.inflight.labels(*v),
            queue_depth=self.queue_depth.labels(*v),
        )

    # -- observations (called from the data plane and the batcher) -------------------------
    #
    # They add to plain numbers (metrics_buffer.Pending) under one lock; flush() moves them
    # into the series: in prometheus_client's multiprocess mode (several front ends) every
    # ``inc`` and ``observe`` writes a shared file under a lock, ~1-2 us each, ~7 per request.

    @staticmethod
    def _new_pending() -> Pending:
        return Pending(_LATENCY_BOUNDS, _BATCH_BOUNDS)

    def request_started(self) -> _Series:
        """Count a request in flight; pass the result to :meth:`request_finished`."""
        with self._lock:
            self._pending.inflight += 1
            return self._series

    def request_finished(
        self, started: _Series, seconds: float, outcome: str, *, idle: bool
    ) -> None:
        """``idle``: no other request is in flight (the data plane counts them): the series
        are flushed now, so they are exact by the time this answer leaves."""
        with self._lock:
            pending = self._pending
            if started is self._series:
                pending.inflight -= 1
            else:  # counted on the series of the backend before a fallback
                started.inflight.dec()
            pending.requests[outcome] = pending.requests.get(outcome, 0) + 1
            if outcome == "success":
                pending.request_duration.observe(seconds)
        self.statistics.finished(seconds, success=outcome == "success")
        if idle:
            self.flush()

    def queued(self, depth: int) -> None:
        self._pending.queue_depth = depth  # the latest wins; no lock needed for one store

    def dispatched(self, waits: Sequence[float], rows: int) -> None:
        self.statistics.dispatched(waits)
        with self._lock:
            pending = self._pending
            for wait in waits:
                pending.queue_duration.observe(wait)
            pending.batch_size.observe(rows)

    def computed(
        self, seconds: float, requests: int = 1, rows: int = 1, cpu_seconds: float = 0.0
    ) -> None:
        self.statistics.computed(seconds, requests, rows)
        with self._lock:
            self._pending.compute_duration.observe(seconds)
            self._pending.compute_cpu += cpu_seconds

    def wide_run(self) -> None:
        self._series.wide_runs.inc()  # off the saturated path: only lone batches get here

    def flush(self) -> None:
        """Move what was observed since the last flush into the series (any thread)."""
        with self._lock:
            pending, self._pending = self._pending, self._new_pending()
        pending.apply(self._series)

    def start_flushing(self) -> None:
        """Flush every :data:`FLUSH_S` from the running event loop while requests keep coming
        (an idle server has flushed already: :meth:`request_finished`)."""
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_every(), name="trtops-metrics")

    def stop_flushing(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    # -- exposition ------------------------------------------------------------------------

    def enable_gpu_metrics(self, registry: CollectorRegistry | None = None) -> bool:
        """Register GPU memory/utilisation gauges (in ``registry``, default this one's) if
        nvidia-ml-py imports and finds a GPU."""
        collector = _GpuCollector.create(self)
        if collector is None:
            return False
        self._gpu = collector
        (registry or self.registry).register(collector)
        return True

    def serve(self, host: str, port: int) -> tuple[Any, threading.Thread]:
        """Start the exposition HTTP server in a daemon thread; returns ``(server, thread)``."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return server, thread


class _FlushFirst(Collector):
    """Registered with the metrics: a scrape flushes before it reads them."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        self._metrics.flush()
        return []


class _GpuCollector(Collector):
    """Reads NVML at scrape time (so no polling thread); absent without nvidia-ml-py or a GPU."""

    def __init__(self, nvml: Any, metrics: ServeMetrics) -> None:
        self._nvml = nvml
        self._metrics = metrics
        self._handles = [
            nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
        ]

    @classmethod
    def create(cls, metrics: ServeMetrics) -> _GpuCollector | None:
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            collector = cls(nvml, metrics)
        except Exception as e:  # no package, no driver, no device: GPU metrics are simply absent
            log.info("GPU metrics off: %s", e)
            return None
        return collector if collector._handles else None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        names = [*LABELS, "gpu"]
        memory = GaugeMetricFamily(
            "trtops_gpu_memory_used_bytes", "GPU memory in use.", labels=names
        )
        util = GaugeMetricFamily(
            "trtops_gpu_utilization_ratio", "GPU busy fraction (0..1).", labels=names
        )
        base = list(self._metrics.labels.values())
        for index, handle in enumerate(self._handles):
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception as e:  # a failing GPU must not break the scrape of everything else
                log.warning("NVML read failed for GPU %d: %s", index, e)
                continue
            memory.add_metric([*base, str(index)], float(mem.used))
            util.add_metric([*base, str(index)], rates.gpu / 100.0)
        return [memory, util]
