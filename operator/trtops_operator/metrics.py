"""Operator metrics (Prometheus), served on their own port: how often it reconciles, how often
that fails, and how builds end. Kept apart so reconcile code only calls ``record_*``."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram, start_http_server

__all__ = ["record_builds", "record_reconcile", "serve"]

RECONCILES = Counter("trtops_reconciles_total", "Reconciles of TrtEngines, by trigger", ["trigger"])
ERRORS = Counter("trtops_reconcile_errors_total", "Reconciles that failed, by kind", ["kind"])
BUILDS = Counter(
    "trtops_builds_total",
    "Builds that reached an outcome (succeeded, cached, reused, failed)",
    ["outcome"],
)
DURATION = Histogram("trtops_reconcile_duration_seconds", "Wall time of one reconcile")


def record_reconcile(trigger: str, seconds: float, error: str | None = None) -> None:
    RECONCILES.labels(trigger=trigger).inc()
    DURATION.observe(seconds)
    if error is not None:
        ERRORS.labels(kind=error).inc()


def record_builds(outcomes: Iterable[str]) -> None:
    for outcome in outcomes:
        BUILDS.labels(outcome=outcome).inc()


def serve(port: int, address: str) -> None:
    """Start the metrics HTTP server in a daemon thread."""
    start_http_server(port, addr=address)
