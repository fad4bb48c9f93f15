"""An analysis' outcome: the :class:`Verdict`, the :class:`Check` comparisons of canary with
stable behind it, and the :class:`Breach` of an absolute SLO; each JSON-serialisable into
``status.canary``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from trtops_operator.canary.samples import RevisionMetrics

__all__ = [
    "Breach",
    "Check",
    "CheckName",
    "CheckResult",
    "InconclusiveReason",
    "Verdict",
    "VerdictKind",
]

VerdictKind = Literal["Passed", "Failed", "InsufficientData", "Inconclusive"]
InconclusiveReason = Literal[
    "PrometheusNotAllowed",
    "PrometheusUnreachable",
    "PrometheusTimeout",
    "QueryError",
    "BadResponse",
]


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
