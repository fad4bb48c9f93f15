"""The PromQL of canary analysis, pure: per revision, request counts by outcome and latency
buckets; per (stable, canary) pair, the shadow agreement. Every query sums over all other labels
(``instance``, ``pod``, ``backend``, ``precision``), so the buckets of every pod of a revision
are added before any quantile: a fleet p99, not an average of per-pod p99s. Metric names are a
contract with ``trtops_worker.serve.metrics`` and ``trtops_worker.serve.shadow``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "LATENCY",
    "MIN_WINDOW_SECONDS",
    "OUTCOMES",
    "REQUESTS",
    "AgreementQueries",
    "Queries",
    "Selector",
    "agreement_queries",
    "promql_string",
    "queries",
    "window_seconds",
]

# increase() needs two samples inside its window. 30 s holds two scrapes at the common 15 s
# scrape interval; for intervals >= 30 s the window is the interval itself, so successive
# analyses look at disjoint traffic and ``failureLimit`` counts independent observations. The
# window is also capped at the time since the current step began (see ``gate.analysis_window``).
MIN_WINDOW_SECONDS = 30

LATENCY = "trtops_request_duration_seconds_bucket"
REQUESTS = "trtops_requests_total"


def window_seconds(
    interval_seconds: int,
    min_window_seconds: int = MIN_WINDOW_SECONDS,
    max_window_seconds: float | None = None,
) -> int:
    """The range ``[W]`` of every query: the analysis interval, at least ``min_window_seconds``,
    but never more than ``max_window_seconds`` (the time the current weight has been in effect),
    and at least 1."""
    w = max(int(interval_seconds), int(min_window_seconds))
    if max_window_seconds is not None:
        w = min(w, int(max_window_seconds))
    return max(w, 1)


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
    """Two instant queries per revision; each answers a vector keyed by one label."""

    outcomes: str  # by ``outcome``: request counts over the window
    buckets: str  # by ``le``: cumulative latency bucket counts of successful requests


def queries(selector: Selector, window: int) -> Queries:
    """The queries for one revision over the last ``window`` seconds. ``increase()`` of the
    buckets keeps the raw counts, so the judge can resample them (a quantile alone cannot)."""
    w = f"[{int(window)}s]"
    return Queries(
        outcomes=f"sum by (outcome) (increase({REQUESTS}{selector.matchers()}{w}))",
        buckets=f"sum by (le) (increase({LATENCY}{selector.matchers()}{w}))",
    )


OUTCOMES = ("success", "client_error", "server_error", "rejected", "cancelled")

# Shadow agreement, exported by the stable pods (``trtops_worker.serve.shadow``): ``revision``
# is stable's, ``candidate_revision`` the canary's.
SHADOW_COSINE = "trtops_shadow_cosine"
SHADOW_TOP1_COMPARED = "trtops_shadow_top1_compared_total"
SHADOW_TOP1_AGREED = "trtops_shadow_top1_agreed_total"


@dataclass(frozen=True)
class AgreementQueries:
    """Four instant queries, each answering a vector keyed by ``output``."""

    cosine_sum: str
    cosine_count: str
    top1_compared: str
    top1_agreed: str


def agreement_queries(stable: Selector, canary_revision: str, window: int) -> AgreementQueries:
    """How the canary's outputs agreed with stable's over the last ``window`` seconds, summed
    over stable's pods: cosine sums and row counts, top-1 positions compared and agreed."""
    pair = Selector(
        stable.model, stable.revision, {**stable.extra, "candidate_revision": canary_revision}
    )
    w = f"{pair.matchers()}[{int(window)}s]"

    def q(metric: str) -> str:
        return f"sum by (output) (increase({metric}{w}))"

    return AgreementQueries(
        q(SHADOW_COSINE + "_sum"),
        q(SHADOW_COSINE + "_count"),
        q(SHADOW_TOP1_COMPARED),
        q(SHADOW_TOP1_AGREED),
    )
