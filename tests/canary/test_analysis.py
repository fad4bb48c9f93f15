"""PromQL per revision and the verdict function (pure)."""

from __future__ import annotations

import pytest
from trtops_operator.canary.analysis import (
    RevisionMetrics,
    Selector,
    evaluate,
    promql_string,
    queries,
    window_seconds,
)
from trtops_operator.models import Slo


def test_queries_aggregate_buckets_across_pods_per_revision() -> None:
    q = queries(Selector("resnet", "r2", {"namespace": "ml"}), 30)
    sel = '{model="resnet",namespace="ml",revision="r2"}'
    buckets = f"sum by (le) (rate(trtops_request_duration_seconds_bucket{sel}[30s]))"
    assert q.p99 == f"histogram_quantile(0.99, {buckets})"
    assert q.p50 == f"histogram_quantile(0.5, {buckets})"
    assert q.requests == f"sum(increase(trtops_requests_total{sel}[30s]))"
    assert q.errors == (
        'sum(increase(trtops_requests_total{model="resnet",namespace="ml",revision="r2",'
        'outcome=~"server_error|rejected"}[30s]))'
    )
    assert q.qps == f"sum(rate(trtops_requests_total{sel}[30s]))"


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", '"plain"'),
        ('a"b', '"a\\"b"'),
        ("back\\slash", '"back\\\\slash"'),
        ('x"} or vector(1) or {a="', '"x\\"} or vector(1) or {a=\\""'),
        ("line\nbreak", '"line\\nbreak"'),
    ],
)
def test_label_values_are_escaped(value: str, literal: str) -> None:
    assert promql_string(value) == literal
    assert Selector(value, "r1").matchers() == f'{{model={literal},revision="r1"}}'


@pytest.mark.parametrize(("interval", "window"), [(10, 30), (15, 30), (30, 30), (60, 60)])
def test_window_is_the_interval_but_at_least_30s(interval: int, window: int) -> None:
    assert window_seconds(interval) == window


def test_metrics_from_samples() -> None:
    m = RevisionMetrics.from_samples(
        {"p50": 0.004, "p99": 0.02, "requests": 200.0, "errors": 3.0, "qps": 6.6}
    )
    assert m == RevisionMetrics(requests=200.0, qps=6.6, p50_ms=4.0, p99_ms=20.0, error_rate=0.015)
    empty = RevisionMetrics.from_samples(
        {"p50": float("nan"), "p99": None, "requests": None, "errors": None, "qps": None}
    )
    assert empty == RevisionMetrics()


SLO = Slo(p99_latency_ms=80, max_error_rate=0.01, max_latency_ratio_to_stable=1.5)
STABLE = RevisionMetrics(requests=1000, p99_ms=40.0, error_rate=0.0)


def m(requests: float = 500, p99: float | None = 50.0, err: float | None = 0.0) -> RevisionMetrics:
    return RevisionMetrics(requests=requests, p99_ms=p99, error_rate=err)


@pytest.mark.parametrize(
    ("canary", "stable", "kind", "slos", "text"),
    [
        (m(), STABLE, "Passed", [], "p99 ratio to stable 1.250"),
        (m(requests=99), STABLE, "InsufficientData", [], "99 requests"),
        (m(requests=0, p99=None, err=None), None, "InsufficientData", [], "minRequests is 100"),
        (m(p99=81.0), STABLE, "Failed", ["maxLatencyRatioToStable", "p99LatencyMs"], "81.0 ms"),
        (m(p99=61.0), STABLE, "Failed", ["maxLatencyRatioToStable"], "ratio 1.525 > 1.5"),
        (m(err=0.02), STABLE, "Failed", ["maxErrorRate"], "error rate 0.0200 > 0.01"),
        (m(p99=None, err=1.0), STABLE, "Failed", ["maxErrorRate", "p99LatencyMs"], "no successful"),
        # the ratio needs a stable with enough data; the absolute SLOs still apply
        (m(p99=70.0), m(requests=10, p99=10.0), "Passed", [], "ratio to stable not checked"),
        (m(p99=70.0), None, "Passed", [], "ratio to stable not checked"),
    ],
)
def test_evaluate(
    canary: RevisionMetrics,
    stable: RevisionMetrics | None,
    kind: str,
    slos: list[str],
    text: str,
) -> None:
    v = evaluate(canary, stable, SLO, min_requests=100)
    assert v.kind == kind
    assert sorted(b.slo for b in v.breaches) == slos
    assert text in v.reason


def test_failed_verdict_carries_measured_and_threshold() -> None:
    v = evaluate(m(p99=120.0), STABLE, SLO, 100)
    p99 = next(b for b in v.breaches if b.slo == "p99LatencyMs")
    assert (p99.measured, p99.threshold) == (120.0, 80.0)
    assert v.latency_ratio == 3.0


def test_no_slo_means_enough_traffic_passes() -> None:
    assert evaluate(m(p99=9999.0, err=0.5), STABLE, None, 100).kind == "Passed"
