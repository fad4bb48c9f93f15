"""Buffered serving observations (serve/metrics_buffer.py) expose exactly what the same calls
straight into prometheus_client would: same buckets, sums, counts and gauges. This also
guards the two prometheus_client internals the buffer writes to (a histogram child's
per-bucket values and its sum)."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from trtops_worker.serve.metrics import LATENCY_BUCKETS, Labels, ServeMetrics
from trtops_worker.serve.metrics_buffer import HistogramBuffer


def _samples(registry: CollectorRegistry) -> list[str]:
    """Exposition lines, less the creation timestamps (they differ between registries)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_buffered_histogram_exposes_what_observe_would() -> None:
    rng = random.Random(7)
    values = [rng.choice([0.0, 0.0005, 0.001, 10.0, 11.0]) for _ in range(50)]
    values += [rng.expovariate(50) for _ in range(500)]  # bucket edges and in between
    direct, buffered = CollectorRegistry(), CollectorRegistry()
    a = Histogram("h", "x", ["k"], registry=direct, buckets=LATENCY_BUCKETS).labels("v")
    b = Histogram("h", "x", ["k"], registry=buffered, buckets=LATENCY_BUCKETS).labels("v")
    buffer = HistogramBuffer([*LATENCY_BUCKETS, float("inf")])
    for value in values:
        a.observe(value)
        buffer.observe(value)
    buffer.apply(b)
    assert _samples(direct) == _samples(buffered)


def test_serve_metrics_are_exact_at_a_scrape_and_once_idle() -> None:
    metrics = ServeMetrics(Labels("conv", "r1", "fp32", "onnxruntime"))

    def value(name: str, **labels: str) -> float:
        got = metrics.registry.get_sample_value(name, {**metrics.labels.__dict__, **labels})
        return 0.0 if got is None else got

    first, second = metrics.request_started(), metrics.request_started()
    metrics.dispatched([0.001, 0.002], rows=2)
    metrics.computed(0.004, requests=2, rows=2, cpu_seconds=0.003)
    metrics.request_finished(first, 0.006, "success", idle=False)
    # one request still in flight: nothing flushed yet, but a scrape flushes first
    text = generate_latest(metrics.registry).decode()
    assert 'trtops_inflight_requests{backend="onnxruntime"' in text
    assert value("trtops_inflight_requests") == 1
    assert value("trtops_requests_total", outcome="success") == 1
    assert value("trtops_batch_size_count") == 1
    assert value("trtops_queue_duration_seconds_count") == 2
    assert value("trtops_compute_cpu_seconds_total") == 0.003
    metrics.request_finished(second, 0.5, "server_error", idle=True)
    # idle now: flushed without a scrape
    assert metrics._pending.requests == {}
    assert value("trtops_requests_total", outcome="server_error") == 1
    assert value("trtops_inflight_requests") == 0
    assert value("trtops_request_duration_seconds_count") == 1  # failures have no latency
