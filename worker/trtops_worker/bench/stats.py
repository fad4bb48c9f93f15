"""Latency statistics and the report table (pure: no I/O, no clock)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BenchResult", "percentile", "render_table"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (what perf_analyzer reports); NaN for no samples."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class BenchResult:
    protocol: str
    url: str
    model: str
    concurrency: int
    rate: float | None
    batch_size: int
    duration_seconds: float
    latencies_s: list[float] = field(default_factory=list, repr=False)
    errors: Counter[str] = field(default_factory=Counter)
    not_sent: int = 0  # rate mode: requests due while every connection was busy
    binary_data: bool = False  # HTTP with the binary tensor data extension instead of JSON
    one_connection: bool = False  # gRPC: every worker on one channel
    cpu_seconds: float = 0.0  # the load generator's own CPU time over the measured window

    @property
    def successes(self) -> int:
        return len(self.latencies_s)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        ms = {f"p{q}": percentile(lat, q) * 1000 for q in (50, 90, 95, 99)}
        ms["mean"] = (sum(lat) / len(lat) * 1000) if lat else math.nan
        ms["max"] = lat[-1] * 1000 if lat else math.nan
        rps = self.successes / self.duration_seconds if self.duration_seconds > 0 else 0.0
        return {
            "protocol": self.protocol,
            "binary_data": self.binary_data,
            "one_connection": self.one_connection,
            "url": self.url,
            "model": self.model,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "batch_size": self.batch_size,
            "duration_seconds": round(self.duration_seconds, 3),
            "requests": self.successes + sum(self.errors.values()),
            "successes": self.successes,
            "errors": dict(self.errors),
            "not_sent": self.not_sent,
            "throughput_rps": round(rps, 1),
            "throughput_infer_per_s": round(rps * self.batch_size, 1),
            "latency_ms": {k: round(v, 3) for k, v in ms.items()},
            "client_cpu_cores": round(self.cpu_seconds / self.duration_seconds, 2)
            if self.duration_seconds > 0
            else 0.0,
        }


def render_table(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    mode = (
        f"rate {summary['rate']}/s" if summary["rate"] else f"concurrency {summary['concurrency']}"
    )
    errors = ", ".join(f"{k}={v}" for k, v in sorted(summary["errors"].items())) or "none"
    rows = [
        (
            "target",
            f"{summary['protocol']}{' (binary data)' if summary.get('binary_data') else ''}"
            f"{' (one connection)' if summary.get('one_connection') else ''} "
            f"{summary['url']} model={summary['model']}",
        ),
        ("load", f"{mode}, batch {summary['batch_size']}, {summary['duration_seconds']} s"),
        ("requests", f"{summary['requests']} ({summary['successes']} ok)"),
        ("errors", errors + (f"; not sent: {summary['not_sent']}" if summary["not_sent"] else "")),
        (
            "throughput",
            f"{summary['throughput_rps']} req/s, {summary['throughput_infer_per_s']} infer/s",
        ),
        (
            "latency ms",
            " ".join(f"{k}={lat[k]:.3f}" for k in ("p50", "p90", "p95", "p99", "mean", "max")),
        ),
        ("client cpu", f"{summary.get('client_cpu_cores', 0.0)} cores"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
