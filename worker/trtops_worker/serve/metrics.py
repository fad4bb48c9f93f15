"""Prometheus metrics for the serving path, on their own registry and port.

Names and labels are a contract: canary analysis and the dashboards query them. Latencies are
histograms (not Triton-style cumulative counters) so a fleet p99 comes from
``histogram_quantile(0.99, sum by (le) (rate(trtops_request_duration_seconds_bucket[1m])))``.
Every series carries ``model``, ``revision``, ``precision`` and ``backend``; after a CPU fallback
new series appear with ``backend="onnxruntime"`` and ``trtops_backend_fallback`` is 1.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "Labels", "ServeMetrics", "Statistics", "merge_model_stats"]

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
LABELS = ("model", "revision", "precision", "backend")
OUTCOMES = ("success", "client_error", "server_error", "rejected")


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
    batch_size: Any
    inflight: Any
    queue_depth: Any


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class Statistics:
    """Triton's model statistics (its statistics extension), from this process's own counts.

    Field meanings follow Triton's ``ModelStatistics`` (``grpc_service.proto``): ``success`` and
    ``fail`` are requests with their total latency, ``queue`` and ``compute_infer`` are per
    request (a batch's compute time counts once for each request in it), ``inference_count``
    counts rows, ``execution_count`` batches, and ``batch_stats`` compute time per batch size.
    Input and output conversion happen outside the timed run, so ``compute_input`` and
    ``compute_output`` stay 0. Updated from the event loop and the instance threads: locked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success, self.fail, self.queue, self.compute = (_Duration() for _ in range(4))
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, _Duration] = {}

    def finished(self, seconds: float, *, success: bool) -> None:
        with self._lock:
            (self.success if success else self.fail).add(seconds)

    def dispatched(self, waits: Sequence[float]) -> None:
        with self._lock:
            self.queue.add(sum(waits), len(waits))

    def computed(self, seconds: float, requests: int, rows: int) -> None:
        with self._lock:
            self.compute.add(seconds * requests, requests)
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.batches.setdefault(rows, _Duration()).add(seconds)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list (HTTP JSON and, parsed, gRPC)."""
        zero = _Duration().as_json()
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_json(),
                    "fail": self.fail.as_json(),
                    "queue": self.queue.as_json(),
                    "compute_input": zero,
                    "compute_infer": self.compute.as_json(),
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": {"count": d.count, "ns": 0},
                        "compute_infer": d.as_json(),
                        "compute_output": {"count": d.count, "ns": 0},
                    }
                    for size, d in sorted(self.batches.items())
                ],
            }


def merge_model_stats(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' ``model_stats`` entries (same model) as one: counts and durations add
    up, ``last_inference`` is the latest (the server's front ends answer as one server)."""
    merged = json.loads(json.dumps(entries[0]))  # a deep copy of plain JSON
    batches = {b["batch_size"]: b for b in merged["batch_stats"]}
    for entry in entries[1:]:
        merged["last_inference"] = max(merged["last_inference"], entry["last_inference"])
        for key in ("inference_count", "execution_count"):
            merged[key] += entry[key]
        for key, value in entry["inference_stats"].items():
            for part in ("count", "ns"):
                merged["inference_stats"][key][part] += value[part]
        for batch in entry["batch_stats"]:
            mine = batches.get(batch["batch_size"])
            if mine is None:
                batches[batch["batch_size"]] = json.loads(json.dumps(batch))
                continue
            for key in ("compute_input", "compute_infer", "compute_output"):
                for part in ("count", "ns"):
                    mine[key][part] += batch[key][part]
    merged["batch_stats"] = [batches[size] for size in sorted(batches)]
    return merged  # type: ignore[no-any-return]


class ServeMetrics:
    """Every serving metric; the ``backend`` label follows the backend in use right now."""

    def __init__(self, labels: Labels, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._labels = labels
        r = self.registry
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
        self.set_backend(labels.backend, fallback=False)

    @property
    def labels(self) -> Labels:
        return self._labels

    def set_backend(self, backend: str, *, fallback: bool) -> None:
        """Switch the ``backend`` label of new observations (CPU fallback)."""
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
            batch_size=self.batch_size.labels(*v),
            inflight=self.inflight.labels(*v),
            queue_depth=self.queue_depth.labels(*v),
        )

    # -- observations (called from the data plane and the batcher) -------------------------

    def request_started(self) -> _Series:
        """Count a request in flight; pass the result to :meth:`request_finished`."""
        series = self._series
        series.inflight.inc()
        return series

    def request_finished(self, started: _Series, seconds: float, outcome: str) -> None:
        started.inflight.dec()  # the series it was counted on
        series = self._series
        series.requests[outcome].inc()
        self.statistics.finished(seconds, success=outcome == "success")
        if outcome == "success":
            series.request_duration.observe(seconds)

    def queued(self, depth: int) -> None:
        self._series.queue_depth.set(depth)

    def dispatched(self, waits: Sequence[float], rows: int) -> None:
        self.statistics.dispatched(waits)
        series = self._series
        for wait in waits:
            series.queue_duration.observe(wait)
        series.batch_size.observe(rows)

    def computed(
        self, seconds: float, requests: int = 1, rows: int = 1, cpu_seconds: float = 0.0
    ) -> None:
        self.statistics.computed(seconds, requests, rows)
        self._series.compute_duration.observe(seconds)
        self._series.compute_cpu.inc(cpu_seconds)

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
