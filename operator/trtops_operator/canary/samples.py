"""What one analysis window measured, from the query results: per revision, requests by
outcome and latency buckets (:class:`RevisionSample`), summarised for status
(:class:`RevisionMetrics`); per output, the shadow agreement (:class:`AgreementSample`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trtops_operator.canary.judge import histogram_quantile

__all__ = ["AgreementSample", "RevisionMetrics", "RevisionSample"]


@dataclass(frozen=True)
class RevisionSample:
    """What one revision did over one window: request counts by outcome and the cumulative
    latency buckets of its successful requests (``(le seconds, count)``, +Inf last). Counts come
    from ``increase()``, which extrapolates to the window's edges, so they need not be whole."""

    outcomes: Mapping[str, float] = field(default_factory=dict)
    buckets: tuple[tuple[float, float], ...] = ()
    window_seconds: float = 0.0

    @classmethod
    def from_vectors(
        cls, outcomes: Mapping[str, float], buckets: Mapping[str, float], window_seconds: float
    ) -> RevisionSample:
        """Build from the query results (label value -> number); NaN and negatives become 0."""

        def clean(x: float) -> float:
            return x if math.isfinite(x) and x > 0 else 0.0

        parsed = sorted((float(le), clean(v)) for le, v in buckets.items())
        return cls({k: clean(v) for k, v in outcomes.items()}, tuple(parsed), float(window_seconds))

    @property
    def requests(self) -> float:
        return sum(self.outcomes.values())

    @property
    def successes(self) -> float:
        return self.outcomes.get("success", 0.0)

    @property
    def server_errors(self) -> float:
        return self.outcomes.get("server_error", 0.0) + self.outcomes.get("rejected", 0.0)

    @property
    def client_errors(self) -> float:
        return self.outcomes.get("client_error", 0.0)

    def metrics(self) -> RevisionMetrics:
        n = self.requests
        p50 = histogram_quantile(0.5, self.buckets)
        p99 = histogram_quantile(0.99, self.buckets)
        return RevisionMetrics(
            requests=n,
            qps=n / self.window_seconds if self.window_seconds > 0 else None,
            p50_ms=None if p50 is None else p50 * 1000.0,
            p99_ms=None if p99 is None else p99 * 1000.0,
            error_rate=self.server_errors / n if n > 0 else None,
            client_error_rate=self.client_errors / n if n > 0 else None,
        )


@dataclass(frozen=True)
class RevisionMetrics:
    """The summary of one revision's window kept in status. ``None``: no value (no request, or
    a quantile over zero successful requests). ``error_rate`` counts server errors and
    rejections; ``client_error_rate`` the requests answered 4xx."""

    requests: float = 0.0
    qps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = None
    client_error_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "requests": round(self.requests, 1),
            "qps": r(self.qps, 3),
            "p50Ms": r(self.p50_ms, 3),
            "p99Ms": r(self.p99_ms, 3),
            "errorRate": r(self.error_rate, 6),
            "clientErrorRate": r(self.client_error_rate, 6),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RevisionMetrics:
        return cls(
            requests=float(data.get("requests") or 0.0),
            qps=data.get("qps"),
            p50_ms=data.get("p50Ms"),
            p99_ms=data.get("p99Ms"),
            error_rate=data.get("errorRate"),
            client_error_rate=data.get("clientErrorRate"),
        )


@dataclass(frozen=True)
class AgreementSample:
    """Per output, over one window: ``rows`` compared, their cosine sum, and top-1 positions
    compared and agreed (from ``increase()``, so not necessarily whole)."""

    rows: Mapping[str, float] = field(default_factory=dict)
    cosine_sum: Mapping[str, float] = field(default_factory=dict)
    top1_compared: Mapping[str, float] = field(default_factory=dict)
    top1_agreed: Mapping[str, float] = field(default_factory=dict)

    def cosine(self) -> tuple[str, float] | None:
        """The output with the lowest mean cosine, and that mean (None: no row compared)."""
        # increase() extrapolates sum and count separately: a ratio can pass 1 by a hair
        means = [
            (min(self.cosine_sum.get(o, 0.0) / n, 1.0), o) for o, n in self.rows.items() if n > 0
        ]
        return (min(means)[1], min(means)[0]) if means else None

    def top1(self) -> tuple[str, float] | None:
        """The output with the lowest top-1 agreement, and that share (None: none compared)."""
        rates = [
            (min(self.top1_agreed.get(o, 0.0) / n, 1.0), o)
            for o, n in self.top1_compared.items()
            if n > 0
        ]
        return (min(rates)[1], min(rates)[0]) if rates else None

    @property
    def samples(self) -> float:
        return min(self.rows.values(), default=0.0)
