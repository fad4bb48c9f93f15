"""The real Prometheus from Debian's package scrapes a target the test starts and answers PromQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server

from tests.support.cluster import wait_for
from tests.support.prometheus import free_port


def test_prometheus_scrapes_a_histogram_and_aggregates_p99(prometheus: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "demo_latency_seconds",
        "demo",
        ["revision"],
        registry=registry,
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 1.0),
    )
    for _ in range(99):
        latency.labels("a").observe(0.003)
    latency.labels("a").observe(0.5)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus({"demo": [f"127.0.0.1:{port}"]})
        result = wait_for(
            lambda: prom.query(
                "histogram_quantile(0.5, sum by (le, revision) (demo_latency_seconds_bucket))"
            ),
            timeout=30,
            what="Prometheus to scrape the target",
        )
        assert result[0]["metric"]["revision"] == "a"
        assert 0.001 < float(result[0]["value"][1]) <= 0.005
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
