"""PromQL per revision and the verdict function (pure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from trtops_operator.canary.analysis import (
    RevisionSample,
    Selector,
    evaluate,
    promql_string,
    queries,
    window_seconds,
)
from trtops_operator.models import Judge, Slo


def test_queries_keep_bucket_counts_per_revision() -> None:
    q = queries(Selector("resnet", "r2", {"namespace": "ml"}), 30)
    sel = '{model="resnet",namespace="ml",revision="r2"}'
    assert q.buckets == f"sum by (le) (increase(trtops_request_duration_seconds_bucket{sel}[30s]))"
    assert q.outcomes == f"sum by (outcome) (increase(trtops_requests_total{sel}[30s]))"


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


@pytest.mark.parametrize(
    ("interval", "since_step", "window"),
    [(10, None, 30), (15, None, 30), (30, None, 30), (60, None, 60), (10, 12.7, 12), (60, 45, 45)],
)
def test_window_is_the_interval_at_least_30s_never_before_the_step(
    interval: int, since_step: float | None, window: int
) -> None:
    assert window_seconds(interval, max_window_seconds=since_step) == window


LES = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1)


def sample(
    latencies_s: np.ndarray | None = None,
    client_errors: int = 0,
    server_errors: int = 0,
    window: float = 30.0,
) -> RevisionSample:
    """A window as Prometheus reports it: cumulative buckets of the successes, counts by
    outcome."""
    lat = np.array([]) if latencies_s is None else latencies_s
    buckets = {str(le): float((lat <= le).sum()) for le in LES}
    buckets["+Inf"] = float(len(lat))
    outcomes = {
        "success": float(len(lat)),
        "client_error": float(client_errors),
        "server_error": float(server_errors),
        "rejected": 0.0,
    }
    return RevisionSample.from_vectors(outcomes, buckets, window)


def latencies(n: int, median_ms: float = 8.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median_ms / 1000), 0.35, n)


JUDGE = Judge()
HEALTHY_STABLE = sample(latencies(3600, seed=1))


def judge(canary: RevisionSample, stable: RevisionSample | None = HEALTHY_STABLE, **kw: Any):
    return evaluate(
        canary, stable, slo=kw.pop("slo", None), judge=kw.pop("judge", JUDGE), min_requests=100
    )


def test_input_1_a_canary_that_rejects_every_request_fails_at_once() -> None:
    """Issue 13, input 1: 400 canary requests, every one answered 400 (an input was renamed);
    stable healthy with 3600. It used to pass ("stable has too little data")."""
    slo = Slo(max_error_rate=0.01, max_latency_ratio_to_stable=1.25)
    v = judge(sample(client_errors=400), slo=slo)
    assert v.kind == "Failed"
    assert v.catastrophic
    assert "canary answered none of its 400 requests successfully" in v.reason
    assert "400 client errors, 0 server errors" in v.reason
    assert v.canary is not None
    assert v.canary.client_error_rate == 1.0


def test_client_errors_count_against_stable() -> None:
    """A canary that rejects 10 % of what stable accepts (stable rejects 1 %) fails, with the
    numbers; stable's own client-error rate is the baseline, not zero."""
    stable = sample(latencies(3564, seed=1), client_errors=36)
    v = judge(sample(latencies(360), client_errors=40), stable)
    assert v.kind == "Failed", v.reason
    assert not v.catastrophic
    check = next(c for c in v.checks if c.name == "clientErrors")
    assert check.result == "Failed"
    assert check.effect == pytest.approx(0.1 - 0.01, abs=1e-3)
    assert check.p_value is not None
    assert check.p_value < 0.001
    assert (check.canary_samples, check.stable_samples) == (400, 3600)
    assert "client-error rate 0.1000 vs stable 0.0100" in v.reason
    # the same client-error rate as stable passes
    same = judge(sample(latencies(396), client_errors=4), stable)
    assert same.kind == "Passed", same.reason


def test_half_the_requests_rejected_is_catastrophic() -> None:
    v = judge(sample(latencies(200), client_errors=200))
    assert (v.kind, v.catastrophic) == ("Failed", True)
    assert "catastrophicErrorRate 0.25" in v.reason


def test_server_errors_two_points_above_stable_fail() -> None:
    v = judge(sample(latencies(392), server_errors=8))
    assert v.kind == "Failed", v.reason
    check = next(c for c in v.checks if c.name == "serverErrors")
    assert check.result == "Failed"
    assert check.effect == pytest.approx(0.02)
    assert not v.catastrophic


@pytest.mark.parametrize(("slowdown", "kind"), [(1.0, "Passed"), (1.05, "Passed"), (2.0, "Failed")])
def test_latency_is_judged_on_the_median_ratio_with_an_interval(slowdown: float, kind: str) -> None:
    v = judge(sample(latencies(400, 8.0 * slowdown, seed=7)))
    assert v.kind == kind, v.reason
    check = next(c for c in v.checks if c.name == "latency")
    assert check.effect is not None
    assert check.lower is not None
    assert check.upper is not None
    assert check.lower <= check.effect <= check.upper
    assert check.effect == pytest.approx(slowdown, rel=0.1)
    assert (check.canary_samples, check.stable_samples) == (400, 3600)
    assert check.threshold == 1.25
    assert "canary/stable median latency" in v.reason


def test_too_few_samples_to_rule_out_the_effect_is_insufficient_not_passed() -> None:
    """A canary 15 % slower on barely 100 requests: significantly slower? not clearly. Below
    1.25x? not clearly either. No promotion on that."""
    noisy = Judge(min_latency_effect=1.1)
    v = judge(sample(latencies(100, 8.4, seed=3)), sample(latencies(100, seed=4)), judge=noisy)
    assert v.kind == "InsufficientData", v.reason
    assert "too noisy to tell (100 canary, 100 stable samples)" in v.reason


@pytest.mark.parametrize(
    ("canary", "stable", "text"),
    [
        (sample(latencies(60)), HEALTHY_STABLE, "canary served 60 requests in the 30 s window"),
        (sample(), HEALTHY_STABLE, "canary served 0 requests"),
        (
            sample(latencies(400)),
            sample(latencies(20)),
            "stable served 20 requests in the 30 s window, fewer than minRequests 100",
        ),
    ],
)
def test_insufficient_data_names_the_side_that_lacked_it(
    canary: RevisionSample, stable: RevisionSample, text: str
) -> None:
    v = judge(canary, stable)
    assert v.kind == "InsufficientData"
    assert text in v.reason


def test_without_stable_only_the_absolute_slos_apply() -> None:
    slo = Slo(p99_latency_ms=80, max_error_rate=0.01)
    ok = evaluate(
        sample(latencies(400)),
        None,
        slo=slo,
        judge=JUDGE,
        min_requests=100,
        stable_note="the canary serves all traffic",
    )
    assert ok.kind == "Passed"
    assert "not compared with stable: the canary serves all traffic" in ok.reason
    slow = judge(sample(latencies(400, 200.0)), None, slo=slo)
    assert [b.slo for b in slow.breaches] == ["p99LatencyMs"]
    assert "canary p99" in slow.reason


def test_histogram_quantile_follows_prometheus() -> None:
    s = sample(latencies(5000, seed=2))
    m = s.metrics()
    exact = np.quantile(latencies(5000, seed=2), [0.5, 0.99]) * 1000
    assert m.p50_ms == pytest.approx(exact[0], rel=0.1)
    assert m.p99_ms == pytest.approx(exact[1], rel=0.25)
    assert m.qps == pytest.approx(5000 / 30)
