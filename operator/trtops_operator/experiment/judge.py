"""The experiment's figures, significance and recommendation, pure.

Per arm (the baseline, then each variant) over the experiment's window: p50/p95/p99 from the
latency histogram, QPS, the server-error rate, output agreement with the baseline on shadow
requests, GPU memory and utilisation where DCGM reports them, and cost per 1M inferences. Each
variant is compared with the baseline by the rollout judge's tests
(:mod:`trtops_operator.canary.judge`): a bootstrap interval on the median-latency ratio, and
Fisher's exact test on the error counts. A difference is *significant* when the interval
excludes 1 (latency) or the p-value is below ``1 - confidence`` (errors).

The recommendation applies the user's rule (``spec.experiment.recommend``): a variant is
eligible when it meets every bound (p95, output agreement on at least ``minShadowSamples``
rows, error rate not significantly worse, no hard-SLO stop); among the eligible ones that are
significantly better than the baseline on the objective (``fastest``: lower median latency,
``cheapest``: lower cost per 1M inferences), the best is recommended; otherwise the baseline is
kept. Deterministic: the same samples always give the same recommendation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trtops_operator.canary.judge import error_increase, histogram_quantile, median_ratio
from trtops_operator.canary.samples import AgreementSample, RevisionSample
from trtops_operator.models import RecommendRule

__all__ = [
    "ArmResult",
    "ArmSample",
    "Recommendation",
    "judge_arms",
    "promote_hint",
    "recommend",
]

Significance = Literal["faster", "slower", "no significant difference", "not compared"]


@dataclass(frozen=True)
class ArmSample:
    """What one arm did over the experiment's window, as queried from Prometheus.

    ``agreement``: how its outputs agreed with the baseline's on shadow requests (None for the
    baseline). ``gpu_memory_mib``/``gpu_utilization_percent``: DCGM's ``DCGM_FI_DEV_FB_USED``
    (max over the arm's pods) and ``DCGM_FI_DEV_GPU_UTIL`` (mean), None where no exporter
    reports them (CPU nodes). ``cost_per_million``: the arm's cost per 1M inferences at the
    throughput it served (:func:`trtops_operator.cost.cost_per_million`; at fixed weights it
    follows the weight more than the precision), None when no price is set."""

    name: str
    precision: str
    revision: str
    weight: int
    sample: RevisionSample
    agreement: AgreementSample | None = None
    gpu_memory_mib: float | None = None
    gpu_utilization_percent: float | None = None
    cost_per_million: float | None = None
    pod_hourly_cost: float | None = None  # one pod of the arm for one hour (trtops_operator.cost)
    stopped: str = ""  # why a hard SLO stopped it ("" = serving)


@dataclass(frozen=True)
class ArmResult:
    """One arm's figures and, for a variant, its comparison with the baseline."""

    arm: ArmSample
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    qps: float | None
    requests: float
    error_rate: float | None
    cosine: float | None = None  # worst output's mean cosine with the baseline
    top1: float | None = None  # worst output's top-1 agreement
    shadow_rows: int = 0
    latency_ratio: float | None = None  # variant median / baseline median
    latency_lower: float | None = None
    latency_upper: float | None = None
    latency: Significance = "not compared"
    # pod-hour price x p50: the cost per 1M inferences of a pod kept busy one request at a
    # time; unlike the measured cost it does not depend on the arm's weight.
    busy_cost_per_million: float | None = None
    error_increase: float | None = None  # variant rate - baseline rate
    error_p_value: float | None = None
    error_worse: bool = False  # significantly more errors than the baseline
    eligible: bool = False
    notes: tuple[str, ...] = ()  # why it is (not) eligible, in words

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 4) -> float | None:
            return None if x is None else float(f"{x:.{nd}g}")

        a = self.arm
        out: dict[str, Any] = {
            "name": a.name,
            "precision": a.precision,
            "revision": a.revision,
            "weight": a.weight,
            "requests": round(self.requests, 1),
            "qps": r(self.qps),
            "p50Ms": r(self.p50_ms),
            "p95Ms": r(self.p95_ms),
            "p99Ms": r(self.p99_ms),
            "errorRate": r(self.error_rate),
            "gpuMemoryMiB": r(a.gpu_memory_mib),
            "gpuUtilizationPercent": r(a.gpu_utilization_percent),
            "costPerMillion": r(a.cost_per_million),
            "busyCostPerMillion": r(self.busy_cost_per_million),
        }
        if a.stopped:
            out["stopped"] = a.stopped
        if a.agreement is not None:
            out |= {
                "outputAgreement": {
                    "cosine": r(self.cosine, 6),
                    "top1": r(self.top1, 6),
                    "rows": self.shadow_rows,
                },
                "latency": {
                    "significance": self.latency,
                    "ratio": r(self.latency_ratio),
                    "lower": r(self.latency_lower),
                    "upper": r(self.latency_upper),
                },
                "errors": {
                    "increase": r(self.error_increase),
                    "pValue": r(self.error_p_value),
                    "worse": self.error_worse,
                },
                "eligible": self.eligible,
                "notes": list(self.notes),
            }
        return {k: v for k, v in out.items() if v is not None}


def _figures(arm: ArmSample) -> dict[str, Any]:
    s = arm.sample
    q = {p: histogram_quantile(p / 100, s.buckets) for p in (50, 95, 99)}
    n = s.requests
    busy = None
    if arm.pod_hourly_cost is not None and q[50] is not None:
        busy = arm.pod_hourly_cost * q[50] / 3600 * 1_000_000
    return {
        "busy_cost_per_million": busy,
        "p50_ms": None if q[50] is None else q[50] * 1000,
        "p95_ms": None if q[95] is None else q[95] * 1000,
        "p99_ms": None if q[99] is None else q[99] * 1000,
        "qps": n / s.window_seconds if s.window_seconds > 0 else None,
        "requests": n,
        "error_rate": s.server_errors / n if n > 0 else None,
    }


def _compare(
    arm: ArmSample, baseline: ArmSample, rule: RecommendRule, min_shadow: int
) -> ArmResult:
    figures = _figures(arm)
    notes: list[str] = []
    eligible = True
    ratio = median_ratio(arm.sample.buckets, baseline.sample.buckets, rule.confidence)
    latency: Significance = "not compared"
    if ratio is not None:
        latency = (
            "faster"
            if ratio.upper < 1
            else "slower"
            if ratio.lower > 1
            else "no significant difference"
        )
    errors = error_increase(
        arm.sample.server_errors, arm.sample.requests,
        baseline.sample.server_errors, baseline.sample.requests,
    )  # fmt: skip
    worse = errors is not None and errors.effect > 0 and errors.p_value < 1 - rule.confidence
    agreement = arm.agreement or AgreementSample()
    cosine, top1 = agreement.cosine(), agreement.top1()
    rows = round(agreement.samples)
    if arm.stopped:
        eligible = False
        notes.append(f"stopped: {arm.stopped}")
    if rule.max_p95_latency_ms is not None:
        p95 = figures["p95_ms"]
        if p95 is None or p95 > rule.max_p95_latency_ms:
            eligible = False
            shown = "none" if p95 is None else f"{p95:.2f} ms"
            notes.append(f"p95 {shown} > maxP95LatencyMs {rule.max_p95_latency_ms:g}")
    want = rule.min_output_agreement
    if want is not None and (want.cosine is not None or want.top1 is not None):
        if rows < min_shadow:
            eligible = False
            notes.append(f"{rows} shadow rows compared, fewer than minShadowSamples {min_shadow}")
        else:
            for what, got, floor in (("cosine", cosine, want.cosine), ("top1", top1, want.top1)):
                if floor is None or got is None:
                    continue
                output, value = got
                if value < floor:
                    eligible = False
                    notes.append(
                        f"output {output!r} {what} {value:.4f}"
                        f" < minOutputAgreement.{what} {floor:g}"
                    )
    if rule.error_rate_not_worse:
        if errors is None:
            eligible = False
            notes.append("error rate not compared: an arm answered no request")
        elif worse:
            eligible = False
            notes.append(
                f"error rate {errors.canary_rate:.4f} significantly above the baseline's"
                f" {errors.stable_rate:.4f} (p={errors.p_value:.3g})"
            )
    if eligible:
        notes.append("meets the rule")
    return ArmResult(
        arm,
        **figures,
        cosine=None if cosine is None else cosine[1],
        top1=None if top1 is None else top1[1],
        shadow_rows=rows,
        latency_ratio=None if ratio is None else ratio.effect,
        latency_lower=None if ratio is None else ratio.lower,
        latency_upper=None if ratio is None else ratio.upper,
        latency=latency,
        error_increase=None if errors is None else errors.effect,
        error_p_value=None if errors is None else errors.p_value,
        error_worse=worse,
        eligible=eligible,
        notes=tuple(notes),
    )


def judge_arms(
    baseline: ArmSample, variants: Sequence[ArmSample], rule: RecommendRule, min_shadow: int
) -> list[ArmResult]:
    """The baseline's figures, then each variant's compared with it."""
    return [ArmResult(baseline, **_figures(baseline))] + [
        _compare(v, baseline, rule, min_shadow) for v in variants
    ]


@dataclass(frozen=True)
class Recommendation:
    """``name``/``precision``: the arm to serve (the baseline's when no variant wins)."""

    name: str
    precision: str
    reason: str
    variant: bool = False
    candidates: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self, promote: str) -> dict[str, Any]:
        return {
            "variant": self.name,
            "precision": self.precision,
            "reason": self.reason,
            "promote": promote,
        }


def recommend(results: Sequence[ArmResult], rule: RecommendRule) -> Recommendation:
    """The user's rule applied to :func:`judge_arms`' results (the baseline first)."""
    base, variants = results[0], results[1:]
    eligible = [r for r in variants if r.eligible]
    if rule.objective == "fastest":
        better = [r for r in eligible if r.latency == "faster"]
        better.sort(key=lambda r: r.latency_ratio if r.latency_ratio is not None else 1.0)
        what = "significantly faster (median latency) than the baseline"
    else:
        base_cost = base.busy_cost_per_million
        better = [
            r
            for r in eligible
            if r.busy_cost_per_million is not None
            and base_cost is not None
            and r.busy_cost_per_million < base_cost
        ]
        better.sort(key=lambda r: r.busy_cost_per_million or 0.0)
        what = "cheaper per 1M inferences (busy pods) than the baseline"
    if better:
        best = better[0]
        figures = (
            f"median latency x{best.latency_ratio:.3f} of the baseline's"
            f" [{best.latency_lower:.3f}, {best.latency_upper:.3f}] at {rule.confidence:g}"
            if best.latency_ratio is not None
            and best.latency_lower is not None
            and best.latency_upper is not None
            else ""
        )
        if rule.objective == "cheapest":
            figures = f"{best.busy_cost_per_million:.4g} vs {base.busy_cost_per_million:.4g} per 1M"
        return Recommendation(
            best.arm.name,
            best.arm.precision,
            f"{best.arm.name} ({best.arm.precision}) is the {rule.objective} variant that meets"
            f" the rule and is {what}: {figures}",
            variant=True,
            candidates=tuple(r.arm.name for r in better),
        )
    if not eligible:
        why = "; ".join(f"{r.arm.name}: {', '.join(r.notes)}" for r in variants)
        reason = f"keep the baseline: no variant meets the rule ({why})"
    elif rule.objective == "cheapest" and base.busy_cost_per_million is None:
        # No price set: nothing to rank by, which is not the same as "none is cheaper".
        reason = (
            "keep the baseline: objective cheapest needs prices, and none are set"
            " (spec.cost, or the chart's cost.gpuHourPrice/cpuHourPrice)"
        )
    else:
        names = ", ".join(r.arm.name for r in eligible)
        reason = f"keep the baseline: {names} meet(s) the rule but none is {what}"
    return Recommendation(base.arm.name, base.arm.precision, reason)


def promote_hint(recommendation: Recommendation) -> str:
    """The one change that promotes the recommendation, in words for status."""
    if not recommendation.variant:
        return "remove spec.experiment (the baseline keeps serving)"
    return (
        f"set spec.build.precision to {recommendation.precision} and remove spec.experiment"
        " (its plan is built already: the canary starts at once)"
    )
