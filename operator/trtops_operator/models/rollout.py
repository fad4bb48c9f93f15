"""``spec.rollout``: the traffic router, the canary steps and the analysis (SLOs, judge, shadow)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from trtops_operator.models.base import Name, SpecModel


class GatewayAPIRouter(SpecModel):
    http_route: Name


class ReplicasRouter(SpecModel):
    pass


class IstioRouter(SpecModel):
    virtual_service: Name
    routes: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=16)] = []


class TrafficRouter(SpecModel):
    gateway_api: GatewayAPIRouter | None = Field(default=None, alias="gatewayAPI")
    replicas: ReplicasRouter | None = None
    istio: IstioRouter | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TrafficRouter:
        if sum(x is not None for x in (self.gateway_api, self.replicas, self.istio)) != 1:
            raise ValueError(
                "spec.rollout.trafficRouter needs exactly one of gatewayAPI, replicas, istio"
            )
        return self


class Step(SpecModel):
    set_weight: Annotated[int, Field(ge=0, le=100)]
    pause_seconds: Annotated[int, Field(ge=0, le=86400)] | None = None
    pause_until_promoted: bool | None = None

    @model_validator(mode="after")
    def _one_pause(self) -> Step:
        if self.pause_seconds is not None and self.pause_until_promoted:
            raise ValueError(
                "spec.rollout.steps[] sets either pauseSeconds or pauseUntilPromoted, not both"
            )
        return self


class PrometheusSource(SpecModel):
    # The CRD's pattern: no user info, query or fragment. Which addresses may be queried is the
    # installer's choice (``--prometheus-address``), checked when the analysis runs.
    address: Annotated[str, Field(max_length=512, pattern=r"^https?://[^\s/@?#]+(/[^\s?#]*)?$")]


class OutputAgreement(SpecModel):
    """The least agreement of the canary's outputs with stable's on shadow requests
    (``docs/experiments.md``): ``cosine``, the mean cosine similarity of output rows;
    ``top1``, the share of positions whose arg-max agrees. The worst output decides."""

    cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    top1: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> OutputAgreement:
        if self.cosine is None and self.top1 is None:  # the CRD's minProperties: 1
            raise ValueError("minOutputAgreement needs cosine or top1")
        return self


class Slo(SpecModel):
    p99_latency_ms: Annotated[float, Field(ge=0.001, le=600000)] | None = None
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_latency_ratio_to_stable: Annotated[float, Field(ge=1, le=100)] | None = None
    min_output_agreement: OutputAgreement | None = None


class Shadow(SpecModel):
    """A ``percent`` of the requests stable answers are also sent to the canary and the
    outputs compared (``docs/experiments.md``); ``minSamples``: output rows compared before
    ``slo.minOutputAgreement`` is judged."""

    percent: Annotated[float, Field(gt=0, le=100)]
    min_samples: Annotated[int, Field(ge=1, le=1000000000)] = 50


class Judge(SpecModel):
    """How the canary is compared with stable (``docs/canary.md``, "The judge")."""

    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    min_latency_effect: Annotated[float, Field(ge=1.01, le=100)] = 1.25
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_client_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.05
    catastrophic_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.25


class Analysis(SpecModel):
    prometheus: PrometheusSource
    interval_seconds: Annotated[int, Field(ge=10, le=3600)] = 30
    failure_limit: Annotated[int, Field(ge=1, le=100)] = 2
    min_requests: Annotated[int, Field(ge=0, le=1000000000)] = 100
    insufficient_data_deadline_seconds: Annotated[int, Field(ge=10, le=86400)] | None = None
    slo: Slo | None = None
    judge: Judge = Judge()
    shadow: Shadow | None = None

    @model_validator(mode="after")
    def _agreement_needs_shadow(self) -> Analysis:
        if self.slo and self.slo.min_output_agreement and self.shadow is None:
            raise ValueError(AGREEMENT_NEEDS_SHADOW)
        return self


AGREEMENT_NEEDS_SHADOW = (
    "spec.rollout.analysis.slo.minOutputAgreement needs spec.rollout.analysis.shadow: outputs"
    " are compared on shadow requests only; add shadow: {percent: 10}"
)


ANALYSIS_NEEDS_WEIGHT = (
    "spec.rollout.analysis needs a step with setWeight above 0: at weight 0 the canary serves no"
    " traffic, so no analysis can pass; add a step such as {setWeight: 10, pauseSeconds: 60}"
    " or remove analysis"
)


class RolloutSpec(SpecModel):
    traffic_router: TrafficRouter
    steps: Annotated[list[Step], Field(min_length=1, max_length=20)] = [Step(set_weight=100)]
    analysis: Analysis | None = None

    @model_validator(mode="after")
    def _non_decreasing(self) -> RolloutSpec:
        weights = [s.set_weight for s in self.steps]
        if weights != sorted(weights):
            raise ValueError(
                "spec.rollout.steps[].setWeight must not decrease from one step to the next"
            )
        if self.analysis is not None and not any(w > 0 for w in weights):
            raise ValueError(ANALYSIS_NEEDS_WEIGHT)
        return self
