"""Canary analysis, pure: PromQL per revision, and two revisions' windows -> a verdict.

The queries read the worker's own metrics (names are a contract with
``trtops_worker.serve.metrics``): ``trtops_request_duration_seconds_bucket`` (successful requests
only) and ``trtops_requests_total{outcome=...}`` (success, client_error, server_error, rejected,
cancelled), labelled ``model``, ``revision``, ``precision``, ``backend``. Every query sums over
all other labels (``instance``, ``pod``, ``backend``, ``precision``), so the buckets of every
pod of a revision are added before any quantile: a fleet p99, not an average of per-pod p99s.

The queries are in :mod:`.promql`, the measured windows in :mod:`.samples`, the outcome types
in :mod:`.verdict` (all re-exported here). :func:`evaluate` applies the evidence rules and the
absolute SLOs, and asks :mod:`trtops_operator.canary.judge` for the statistics. Only
:mod:`trtops_operator.canary.runner` runs the queries; nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

from trtops_operator.canary.judge import error_increase, median_ratio
from trtops_operator.canary.promql import (
    MIN_WINDOW_SECONDS,
    AgreementQueries,
    Queries,
    Selector,
    agreement_queries,
    promql_string,
    queries,
    window_seconds,
)
from trtops_operator.canary.samples import AgreementSample, RevisionMetrics, RevisionSample
from trtops_operator.canary.verdict import (
    Breach,
    Check,
    CheckResult,
    InconclusiveReason,
    Verdict,
    VerdictKind,
)
from trtops_operator.models import Judge, OutputAgreement, Slo

__all__ = [
    "MIN_WINDOW_SECONDS",
    "AgreementQueries",
    "AgreementSample",
    "Breach",
    "Check",
    "InconclusiveReason",
    "Queries",
    "RevisionMetrics",
    "RevisionSample",
    "Selector",
    "Verdict",
    "VerdictKind",
    "agreement_queries",
    "evaluate",
    "promql_string",
    "queries",
    "window_seconds",
]


def _agreement_check(sample: AgreementSample, want: OutputAgreement, min_samples: int) -> Check:
    """A point estimate against a floor, once ``min_samples`` rows of every output were
    compared: agreement is a property of the two models on these inputs, not a noisy
    latency, and shadow rows are many, so no bounds are drawn (docs/experiments.md)."""
    n = _n(sample.samples)
    base = Check("outputAgreement", "InsufficientData", "", n, n)
    if n < min_samples:
        return replace(
            base,
            message=f"output agreement not judged: {n} shadow rows compared, fewer than"
            f" shadow.minSamples {min_samples}",
        )
    passed: list[str] = []
    failed: list[str] = []
    worst: tuple[float, float] | None = None  # (measured, floor): the first failing, else first
    for field_name, what, got, floor in (
        ("cosine", "mean cosine", sample.cosine(), want.cosine),
        ("top1", "top-1 agreement", sample.top1(), want.top1),
    ):
        if floor is None:
            continue
        if got is None:
            passed.append(f"{what}: no output to compare")
            continue
        output, value = got
        text = f"output {output!r} {what} {value:.4f}"
        if value < floor:
            failed.append(f"{text} < minOutputAgreement.{field_name} {floor:g}")
            worst = worst if worst and worst[0] < worst[1] else (value, floor)
        else:
            passed.append(f"{text} >= {floor:g}")
            worst = worst or (value, floor)
    effect, threshold = worst if worst else (None, None)
    result: CheckResult = "Failed" if failed else "Passed"
    message = "; ".join(failed or passed) + f" over {n} shadow rows"
    return replace(base, result=result, message=message, effect=effect, threshold=threshold)


def _n(x: float) -> int:
    return round(x)


def _rate_check(
    name: Literal["serverErrors", "clientErrors"],
    canary_errors: float,
    canary: RevisionSample,
    stable_errors: float,
    stable: RevisionSample,
    allowed: float,
    confidence: float,
) -> Check | None:
    test = error_increase(canary_errors, canary.requests, stable_errors, stable.requests)
    if test is None:
        return None
    what = "server-error" if name == "serverErrors" else "client-error"
    numbers = (
        f"canary {what} rate {test.canary_rate:.4f} vs stable {test.stable_rate:.4f}"
        f" (+{test.effect:.4f}, p={test.p_value:.3g}, allowed +{allowed:g})"
    )
    failed = test.p_value < 1.0 - confidence and test.effect > allowed
    return Check(
        name,
        "Failed" if failed else "Passed",
        numbers,
        _n(canary.requests),
        _n(stable.requests),
        effect=test.effect,
        p_value=test.p_value,
        threshold=allowed,
    )


def _latency_check(
    canary: RevisionSample, stable: RevisionSample, judge: Judge, min_requests: int
) -> Check:
    """Two one-sided bounds on the median ratio against ``m = minLatencyEffect``: Passed only
    when the upper bound is below ``m`` (the data rule out a slowdown that matters); Failed when
    the lower bound is above ``sqrt(m)``, the midpoint of 1 and ``m`` on the log scale (the data
    say the canary is nearer a slowdown of ``m`` than none: the boundary of a sequential test
    between "no change" and "a change of ``m``"); otherwise too little data to tell, which holds
    the step. A revision a few % slower, as the same model on another pod of a busy node is,
    falls between 1 and ``sqrt(m)`` and is never rolled back for it."""
    need = max(min_requests, 1)
    n_c, n_s = _n(canary.successes), _n(stable.successes)
    base = Check("latency", "InsufficientData", "", n_c, n_s, threshold=judge.min_latency_effect)
    for side, n in (("canary", n_c), ("stable", n_s)):
        if n < need:
            why = f"{side} answered {n} requests successfully, fewer than minRequests {need}"
            return replace(base, message=f"latency not compared: {why}")
    ratio = median_ratio(canary.buckets, stable.buckets, judge.confidence)
    if ratio is None:
        return replace(base, message="latency not compared: stable median latency is 0")
    numbers = (
        f"canary/stable median latency {ratio.effect:.3f}"
        f" [{ratio.lower:.3f}, {ratio.upper:.3f}] at {judge.confidence:g}"
        f" (minLatencyEffect {judge.min_latency_effect:g})"
    )
    checked = replace(base, effect=ratio.effect, lower=ratio.lower, upper=ratio.upper)
    if ratio.upper < judge.min_latency_effect:
        return replace(checked, result="Passed", message=numbers)
    if ratio.lower > math.sqrt(judge.min_latency_effect):
        return replace(checked, result="Failed", message=f"{numbers}: canary is slower")
    return replace(
        checked,
        message=f"{numbers}: too noisy to tell ({n_c} canary, {n_s} stable samples)",
    )


def evaluate(
    canary: RevisionSample,
    stable: RevisionSample | None,
    *,
    slo: Slo | None,
    judge: Judge,
    min_requests: int,
    stable_note: str = "no stable revision to compare with",
    agreement: AgreementSample | None = None,
    min_shadow_samples: int = 50,
) -> Verdict:
    """Judge the canary's window against stable's (None: nothing to compare with, and
    ``stable_note`` says why). Order: canary evidence, then a canary that answered nothing
    well (Failed, catastrophic), absolute SLOs, catastrophic error rates, then the comparisons,
    each needing ``min_requests`` on both sides. Failed beats InsufficientData beats Passed.
    Fewer than ``min_requests`` canary requests is InsufficientData, never a failure here (the
    state machine owns the deadline). ``agreement``: the shadow comparison of the canary's
    outputs with stable's, judged against ``slo.minOutputAgreement`` once every output has
    ``min_shadow_samples`` rows."""
    cm = canary.metrics()
    sm = stable.metrics() if stable is not None else None
    need = max(min_requests, 1)
    window = f"{canary.window_seconds:.0f} s window"
    if canary.requests < need:
        return Verdict(
            "InsufficientData",
            f"canary served {canary.requests:.0f} requests in the {window}, fewer than"
            f" minRequests {min_requests}",
            cm,
            sm,
        )
    ratio = None
    if (
        stable is not None
        and sm is not None
        and sm.p99_ms
        and cm.p99_ms is not None
        and stable.requests >= need
    ):
        ratio = cm.p99_ms / sm.p99_ms
    if canary.successes < 0.5:
        msg = (
            f"canary answered none of its {canary.requests:.0f} requests successfully"
            f" ({canary.client_errors:.0f} client errors, {canary.server_errors:.0f} server"
            f" errors) in the {window}"
        )
        check = Check("successes", "Failed", msg, _n(canary.requests), 0)
        return Verdict("Failed", msg, cm, sm, ratio, checks=(check,), catastrophic=True)

    breaches: list[Breach] = []
    if slo is not None:
        if slo.p99_latency_ms is not None and (cm.p99_ms is None or cm.p99_ms > slo.p99_latency_ms):
            breaches.append(Breach("p99LatencyMs", cm.p99_ms, slo.p99_latency_ms))
        if (
            slo.max_error_rate is not None
            and cm.error_rate is not None
            and cm.error_rate > slo.max_error_rate
        ):
            breaches.append(Breach("maxErrorRate", cm.error_rate, slo.max_error_rate))
        if (
            slo.max_latency_ratio_to_stable is not None
            and ratio is not None
            and ratio > slo.max_latency_ratio_to_stable
        ):
            breaches.append(
                Breach("maxLatencyRatioToStable", ratio, slo.max_latency_ratio_to_stable)
            )

    checks: list[Check] = []
    notes: list[str] = []
    if stable is None:
        notes.append(f"not compared with stable: {stable_note}")
    elif stable.requests < need:
        notes.append(
            f"stable served {stable.requests:.0f} requests in the {window}, fewer than"
            f" minRequests {min_requests}: nothing to compare the canary with"
        )
    else:
        for c in (
            _rate_check(
                "serverErrors",
                canary.server_errors,
                canary,
                stable.server_errors,
                stable,
                judge.max_error_rate_increase,
                judge.confidence,
            ),
            _rate_check(
                "clientErrors",
                canary.client_errors,
                canary,
                stable.client_errors,
                stable,
                judge.max_client_error_rate_increase,
                judge.confidence,
            ),
            _latency_check(canary, stable, judge, min_requests),
        ):
            if c is not None:
                checks.append(c)
    if agreement is not None and slo is not None and slo.min_output_agreement is not None:
        checks.append(_agreement_check(agreement, slo.min_output_agreement, min_shadow_samples))

    stable_client = (stable.client_errors / stable.requests) if stable and stable.requests else 0.0
    excess_client = (cm.client_error_rate or 0.0) - stable_client
    catastrophic = (cm.error_rate or 0.0) >= judge.catastrophic_error_rate or (
        excess_client >= judge.catastrophic_error_rate
    )
    failed = [c for c in checks if c.result == "Failed"]
    if breaches or failed or catastrophic:
        parts = [b.describe() for b in breaches] + [c.message for c in failed]
        if catastrophic:
            parts.append(
                f"canary error rate {cm.error_rate or 0.0:.4f}, client-error rate"
                f" {cm.client_error_rate or 0.0:.4f} (stable {stable_client:.4f}):"
                f" past catastrophicErrorRate {judge.catastrophic_error_rate:g}"
            )
        return Verdict(
            "Failed",
            "; ".join(parts),
            cm,
            sm,
            ratio,
            tuple(breaches),
            checks=tuple(checks),
            catastrophic=catastrophic,
        )
    short = [c for c in checks if c.result == "InsufficientData"]
    if stable is not None and stable.requests < need:
        return Verdict("InsufficientData", notes[0], cm, sm, ratio, checks=tuple(checks))
    if short:
        return Verdict(
            "InsufficientData",
            "; ".join(c.message for c in short),
            cm,
            sm,
            ratio,
            checks=tuple(checks),
        )
    summary = [_summary(cm), *notes, *(c.message for c in checks)]
    if slo is not None and slo.max_latency_ratio_to_stable is not None and ratio is not None:
        summary.append(f"p99 ratio to stable {ratio:.3f}")
    return Verdict("Passed", "; ".join(summary), cm, sm, ratio, checks=tuple(checks))


def _summary(m: RevisionMetrics) -> str:
    p99 = "n/a" if m.p99_ms is None else f"{m.p99_ms:.1f} ms"
    err = "n/a" if m.error_rate is None else f"{m.error_rate:.4f}"
    return f"canary p99 {p99}, error rate {err}, {m.requests:.0f} requests"
