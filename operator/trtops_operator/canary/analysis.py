"""Canary analysis, pure: PromQL per revision, and measurements + SLO -> a verdict.

The queries read the worker's own metrics (names are a contract with
``trtops_worker.serve.metrics``): ``trtops_request_duration_seconds_bucket`` (successful requests
only) and ``trtops_requests_total{outcome=success|client_error|server_error|rejected}``, labelled
``model``, ``revision``, ``precision``, ``backend``. Every query sums over all other labels
(``instance``, ``pod``, ``backend``, ``precision``), so p99 aggregates the buckets of every pod of
a revision before taking the quantile: a fleet p99, not an average of per-pod p99s.

Only :mod:`trtops_operator.canary.prometheus` runs these queries; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trtops_operator.models import Slo

__all__ = [
    "MIN_WINDOW_SECONDS",
    "Breach",
    "InconclusiveReason",
    "Queries",
    "RevisionMetrics",
    "Selector",
    "Verdict",
    "VerdictKind",
    "evaluate",
    "promql_string",
    "queries",
    "window_seconds",
]

# rate() needs two samples inside its window. 30 s holds two scrapes at the common 15 s scrape
# interval; for intervals >= 30 s the window is the interval itself, so successive analyses look
# at disjoint traffic and ``failureLimit`` counts independent observations.
MIN_WINDOW_SECONDS = 30

VerdictKind = Literal["Passed", "Failed", "InsufficientData", "Inconclusive"]
InconclusiveReason = Literal[
    "PrometheusUnreachable", "PrometheusTimeout", "QueryError", "BadResponse"
]

LATENCY = "trtops_request_duration_seconds_bucket"
REQUESTS = "trtops_requests_total"
ERROR_OUTCOMES = "server_error|rejected"  # client_error is the caller's fault, not the revision's


def window_seconds(interval_seconds: int, min_window_seconds: int = MIN_WINDOW_SECONDS) -> int:
    """The range ``[W]`` of every query: the analysis interval, at least ``min_window_seconds``."""
    return max(int(interval_seconds), int(min_window_seconds))


def promql_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal (backslash, quote, newline escaped)."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


@dataclass(frozen=True)
class Selector:
    """Which series belong to one revision. ``extra`` adds equality matchers (``namespace``,
    ``job``) for Prometheus servers that scrape more than one cluster or engine."""

    model: str
    revision: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def matchers(self, **more: str) -> str:
        labels = {"model": self.model, "revision": self.revision, **self.extra}
        parts = [f"{k}={promql_string(v)}" for k, v in sorted(labels.items())]
        parts += [f"{k}=~{promql_string(v)}" for k, v in more.items()]
        return "{" + ",".join(parts) + "}"


@dataclass(frozen=True)
class Queries:
    p50: str
    p99: str
    requests: str
    errors: str
    qps: str

    def items(self) -> tuple[tuple[str, str], ...]:
        return (
            ("p50", self.p50),
            ("p99", self.p99),
            ("requests", self.requests),
            ("errors", self.errors),
            ("qps", self.qps),
        )


def queries(selector: Selector, window: int) -> Queries:
    """The five instant queries for one revision over the last ``window`` seconds."""
    w = f"[{int(window)}s]"
    buckets = f"sum by (le) (rate({LATENCY}{selector.matchers()}{w}))"
    return Queries(
        p50=f"histogram_quantile(0.5, {buckets})",
        p99=f"histogram_quantile(0.99, {buckets})",
        requests=f"sum(increase({REQUESTS}{selector.matchers()}{w}))",
        errors=f"sum(increase({REQUESTS}{selector.matchers(outcome=ERROR_OUTCOMES)}{w}))",
        qps=f"sum(rate({REQUESTS}{selector.matchers()}{w}))",
    )


@dataclass(frozen=True)
class RevisionMetrics:
    """What one revision did over the window. ``None``: Prometheus had no value (no series, or
    a quantile over zero successful requests)."""

    requests: float = 0.0
    qps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = None

    @classmethod
    def from_samples(cls, samples: Mapping[str, float | None]) -> RevisionMetrics:
        """Build from the query results keyed like :meth:`Queries.items` (seconds, counts)."""

        def finite(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) or math.isinf(x) else x

        requests = finite(samples.get("requests")) or 0.0
        errors = finite(samples.get("errors"))
        p50, p99 = finite(samples.get("p50")), finite(samples.get("p99"))
        return cls(
            requests=requests,
            qps=finite(samples.get("qps")),
            p50_ms=None if p50 is None else p50 * 1000.0,
            p99_ms=None if p99 is None else p99 * 1000.0,
            error_rate=(errors or 0.0) / requests if requests > 0 else None,
        )

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "requests": round(self.requests, 1),
            "qps": r(self.qps, 3),
            "p50Ms": r(self.p50_ms, 3),
            "p99Ms": r(self.p99_ms, 3),
            "errorRate": r(self.error_rate, 6),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RevisionMetrics:
        return cls(
            requests=float(data.get("requests") or 0.0),
            qps=data.get("qps"),
            p50_ms=data.get("p50Ms"),
            p99_ms=data.get("p99Ms"),
            error_rate=data.get("errorRate"),
        )


@dataclass(frozen=True)
class Breach:
    """One broken SLO: the spec field's name, what was measured, and its threshold."""

    slo: str
    measured: float | None
    threshold: float

    def describe(self) -> str:
        fmt = {
            "p99LatencyMs": ("canary p99 {m} ms > {t} ms", 1),
            "maxErrorRate": ("canary error rate {m} > {t}", 4),
            "maxLatencyRatioToStable": ("canary/stable p99 ratio {m} > {t}", 3),
            "minRequests": ("{m} requests < minRequests {t} past the deadline", 0),
        }
        template, nd = fmt.get(self.slo, (self.slo + " {m} vs {t}", 3))
        if self.measured is None:
            m = "none (no successful request)"
        else:
            m = f"{self.measured:.{nd}f}" if nd else f"{self.measured:.0f}"
        return template.format(m=m, t=f"{self.threshold:g}") + f" ({self.slo})"

    def to_json(self) -> dict[str, Any]:
        return {"slo": self.slo, "measured": self.measured, "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Breach:
        return cls(str(data["slo"]), data.get("measured"), float(data["threshold"]))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis. ``reason`` is a sentence for status and events."""

    kind: VerdictKind
    reason: str
    canary: RevisionMetrics | None = None
    stable: RevisionMetrics | None = None
    latency_ratio: float | None = None
    breaches: tuple[Breach, ...] = ()
    inconclusive: InconclusiveReason | None = None

    @classmethod
    def make_inconclusive(cls, why: InconclusiveReason, message: str) -> Verdict:
        return cls("Inconclusive", f"{why}: {message}", inconclusive=why)


def evaluate(
    canary: RevisionMetrics,
    stable: RevisionMetrics | None,
    slo: Slo | None,
    min_requests: int,
) -> Verdict:
    """Judge the canary. Fewer than ``min_requests`` is InsufficientData (never a failure here:
    the state machine owns the deadline). The ratio check needs a stable p99 from at least
    ``min_requests`` requests; without one it is skipped and the reason says so."""
    ratio = None
    stable_ok = (
        stable is not None
        and stable.requests >= max(min_requests, 1)
        and stable.p99_ms is not None
        and stable.p99_ms > 0
    )
    if stable_ok and canary.p99_ms is not None:
        assert stable is not None  # narrowed by stable_ok
        assert stable.p99_ms is not None
        ratio = canary.p99_ms / stable.p99_ms
    if canary.requests < max(min_requests, 1):
        return Verdict(
            "InsufficientData",
            f"canary served {canary.requests:.0f} requests in the window, minRequests is "
            f"{min_requests}",
            canary,
            stable,
            ratio,
        )
    breaches: list[Breach] = []
    if slo is not None:
        if slo.p99_latency_ms is not None and (
            canary.p99_ms is None or canary.p99_ms > slo.p99_latency_ms
        ):
            breaches.append(Breach("p99LatencyMs", canary.p99_ms, slo.p99_latency_ms))
        if (
            slo.max_error_rate is not None
            and canary.error_rate is not None
            and canary.error_rate > slo.max_error_rate
        ):
            breaches.append(Breach("maxErrorRate", canary.error_rate, slo.max_error_rate))
        if (
            slo.max_latency_ratio_to_stable is not None
            and ratio is not None
            and ratio > slo.max_latency_ratio_to_stable
        ):
            breaches.append(
                Breach("maxLatencyRatioToStable", ratio, slo.max_latency_ratio_to_stable)
            )
    if breaches:
        return Verdict(
            "Failed",
            "; ".join(b.describe() for b in breaches),
            canary,
            stable,
            ratio,
            tuple(breaches),
        )
    notes = [_summary(canary)]
    if slo is not None and slo.max_latency_ratio_to_stable is not None and ratio is None:
        notes.append("ratio to stable not checked: stable has too little data")
    elif ratio is not None:
        notes.append(f"p99 ratio to stable {ratio:.3f}")
    return Verdict("Passed", "; ".join(notes), canary, stable, ratio)


def _summary(m: RevisionMetrics) -> str:
    p99 = "n/a" if m.p99_ms is None else f"{m.p99_ms:.1f} ms"
    err = "n/a" if m.error_rate is None else f"{m.error_rate:.4f}"
    return f"canary p99 {p99}, error rate {err}, {m.requests:.0f} requests"
