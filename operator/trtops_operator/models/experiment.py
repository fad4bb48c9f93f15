"""``spec.experiment``: precision variants served beside the baseline at fixed weights until a
duration or a request count is reached, then compared and one recommended
(``docs/experiments.md``, "Experiments")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trtops_operator.models.base import Backend, Precision, SpecModel
from trtops_operator.models.build import BuildSpec
from trtops_operator.models.rollout import OutputAgreement, PrometheusSource, RolloutSpec

# A variant's name goes into its Service's name (<engine>-x-<name>): a short DNS label.
VariantName = Annotated[
    str, Field(min_length=1, max_length=12, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]

EXPERIMENT_NEEDS_AN_END = "spec.experiment needs durationSeconds or minRequests (or both)"
EXPERIMENT_WEIGHTS = (
    "spec.experiment.variants[].weight must sum to at most 90: the baseline keeps the rest"
    " of the traffic, and at least 10 % (it is what every variant is compared with)"
)


class Variant(SpecModel):
    """One arm beside the baseline: the engine's own build at another ``precision``, served
    with ``weight`` percent of the live traffic."""

    name: VariantName
    precision: Precision
    weight: Annotated[int, Field(ge=1, le=90)]


class HardSlo(SpecModel):
    """A variant breaching one of these is stopped at once (weight 0) and marked so; nothing
    else is rolled back during an experiment."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    p99_latency_ms: Annotated[float, Field(ge=0.001, le=600000)] | None = None

    @model_validator(mode="after")
    def _one(self) -> HardSlo:
        if self.max_error_rate is None and self.p99_latency_ms is None:
            raise ValueError("spec.experiment.hardSlo needs maxErrorRate or p99LatencyMs")
        return self


class RecommendRule(SpecModel):
    """The user's rule: among the variants that meet every bound, the ``objective``'s best one
    that is *significantly* better than the baseline; otherwise keep the baseline."""

    objective: Literal["fastest", "cheapest"] = "fastest"
    max_p95_latency_ms: Annotated[float, Field(ge=0.001, le=600000)] | None = None
    min_output_agreement: OutputAgreement | None = None
    error_rate_not_worse: bool = True
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95


class Experiment(SpecModel):
    variants: Annotated[list[Variant], Field(min_length=1, max_length=3)]
    duration_seconds: Annotated[int, Field(ge=30, le=2592000)] | None = None
    min_requests: Annotated[int, Field(ge=1, le=1000000000)] | None = None
    shadow_percent: Annotated[float, Field(gt=0, le=100)] = 10.0
    min_shadow_samples: Annotated[int, Field(ge=1, le=1000000000)] = 50
    interval_seconds: Annotated[int, Field(ge=10, le=3600)] = 30
    prometheus: PrometheusSource | None = None
    recommend: RecommendRule = RecommendRule()
    hard_slo: HardSlo | None = None

    @model_validator(mode="after")
    def _rules(self) -> Experiment:
        if self.duration_seconds is None and self.min_requests is None:
            raise ValueError(EXPERIMENT_NEEDS_AN_END)
        if sum(v.weight for v in self.variants) > 90:
            raise ValueError(EXPERIMENT_WEIGHTS)
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("spec.experiment.variants[].name must be unique")
        precisions = [v.precision for v in self.variants]
        if len(set(precisions)) != len(precisions):
            raise ValueError("spec.experiment.variants[].precision must be unique")
        return self


EXPERIMENT_NEEDS_ROUTER = (
    "spec.experiment needs spec.rollout.trafficRouter gatewayAPI or istio: variants are served"
    " at fixed route weights"
)
EXPERIMENT_WITH_SHADOW = (
    "spec.experiment and spec.rollout.analysis.shadow cannot be combined: stable pods shadow to"
    " one place, the experiment's variants or the canary (a canary judged on output agreement"
    " would wait for rows that never come); remove one"
)
EXPERIMENT_NEEDS_PROMETHEUS = (
    "spec.experiment needs a Prometheus to measure the variants: set spec.experiment.prometheus"
    " or spec.rollout.analysis.prometheus"
)


def experiment_rules(
    exp: Experiment, build: BuildSpec, backend: Backend, rollout: RolloutSpec | None
) -> None:
    """The CRD's CEL rules across ``spec.experiment`` and the rest of the spec, same messages."""
    router = rollout.traffic_router if rollout is not None else None
    if router is None or (router.gateway_api is None and router.istio is None):
        raise ValueError(EXPERIMENT_NEEDS_ROUTER)
    if exp.prometheus is None and (rollout is None or rollout.analysis is None):
        raise ValueError(EXPERIMENT_NEEDS_PROMETHEUS)
    if rollout is not None and rollout.analysis is not None and rollout.analysis.shadow is not None:
        raise ValueError(EXPERIMENT_WITH_SHADOW)
    for v in exp.variants:
        if v.precision == build.precision:
            raise ValueError(
                "spec.experiment.variants[].precision must differ from spec.build.precision"
                " (the baseline)"
            )
        if v.precision in ("int8", "fp8") and build.calibration is None:
            raise ValueError(
                "spec.build.calibration is required for an int8 or fp8 variant of spec.experiment"
            )
        if backend == "onnxruntime" and v.precision in ("tf32", "fp8"):
            raise ValueError(
                "spec.experiment.variants[].precision tf32 and fp8 exist only on"
                " spec.serving.backend tensorrt"
            )
