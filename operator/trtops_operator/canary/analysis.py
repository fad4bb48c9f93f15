"""Canary analysis, pure: PromQL per revision, and two revisions' windows -> a verdict.

The queries read the worker's own metrics (names are a contract with
``trtops_worker.serve.metrics``): ``trtops_request_duration_seconds_bucket`` (successful requests
only) and ``trtops_requests_total{outcome=success|client_error|server_error|rejected}``, labelled
``model``, ``revision``, ``precision``, ``backend``. Every query sums over all other labels
(``instance``, ``pod``, ``backend``, ``precision``), so the buckets of every pod of a revision
are added before any quantile: a fleet p99, not an average of per-pod p99s.

:func:`evaluate` applies the evidence rules and the absolute SLOs, and asks
:mod:`trtops_operator.canary.judge` for the statistics. Only
:mod:`trtops_operator.canary.prometheus` runs the queries; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from trtops_operator.canary.judge import error_increase, histogram_quantile, median_ratio
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

# increase() needs two samples inside its window. 30 s holds two scrapes at the common 15 s
# scrape interval; for intervals >= 30 s the window is the interval itself, so successive
# analyses look at disjoint traffic and ``failureLimit`` counts independent observations. The
# window is also capped at the time since the current step began (see ``gate.analysis_window``).
MIN_WINDOW_SECONDS = 30

VerdictKind = Literal["Passed", "Failed", "InsufficientData", "Inconclusive"]
InconclusiveReason = Literal[
    "PrometheusNotAllowed",
    "PrometheusUnreachable",
    "PrometheusTimeout",
    "QueryError",
    "BadResponse",
]

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


OUTCOMES = ("success", "client_error", "server_error", "rejected")

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
class Breach:
    """One broken absolute SLO: the spec field's name, what was measured, and its threshold."""

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


CheckName = Literal["successes", "latency", "serverErrors", "clientErrors", "outputAgreement"]
CheckResult = Literal["Passed", "Failed", "InsufficientData"]


@dataclass(frozen=True)
class Check:
    """One comparison of canary with stable, with its numbers (kept in ``status.canary``).

    ``latency``: ``effect`` is canary median / stable median, ``lower``/``upper`` its one-sided
    bounds at the judge's confidence, ``threshold`` ``minLatencyEffect``. ``serverErrors`` /
    ``clientErrors``: ``effect`` is canary rate - stable rate, ``p_value`` Fisher's one-sided
    test, ``threshold`` the allowed increase. ``successes``: the canary answered nothing well.
    ``canary_samples``/``stable_samples``: requests each side contributed."""

    name: CheckName
    result: CheckResult
    message: str
    canary_samples: int = 0
    stable_samples: int = 0
    effect: float | None = None
    lower: float | None = None
    upper: float | None = None
    p_value: float | None = None
    threshold: float | None = None

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else float(f"{x:.4g}")

        return {
            "name": self.name,
            "result": self.result,
            "message": self.message,
            "canarySamples": self.canary_samples,
            "stableSamples": self.stable_samples,
            "effect": r(self.effect),
            "lower": r(self.lower),
            "upper": r(self.upper),
            "pValue": r(self.p_value),
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Check:
        return cls(
            name=d["name"],
            result=d["result"],
            message=str(d.get("message", "")),
            canary_samples=int(d.get("canarySamples") or 0),
            stable_samples=int(d.get("stableSamples") or 0),
            effect=d.get("effect"),
            lower=d.get("lower"),
            upper=d.get("upper"),
            p_value=d.get("pValue"),
            threshold=d.get("threshold"),
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis. ``reason`` is a sentence for status and events; it names the
    side that lacked data, or what failed with its numbers. ``catastrophic``: a Failed so clear
    (nothing answered well, or an error rate past ``catastrophicErrorRate``) that the rollout
    rolls back at once instead of waiting for ``failureLimit``."""

    kind: VerdictKind
    reason: str
    canary: RevisionMetrics | None = None
    stable: RevisionMetrics | None = None
    latency_ratio: float | None = None
    breaches: tuple[Breach, ...] = ()
    inconclusive: InconclusiveReason | None = None
    checks: tuple[Check, ...] = ()
    catastrophic: bool = False

    @classmethod
    def make_inconclusive(cls, why: InconclusiveReason, message: str) -> Verdict:
        return cls("Inconclusive", f"{why}: {message}", inconclusive=why)


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
