"""Typed models of the ``TrtEngine`` spec.

The CRD schema is what refuses bad resources (the API server runs it); these models mirror it so
the operator's code reads typed fields instead of nested dicts, and so a resource that slipped
past an older CRD fails loudly (``extra="forbid"``) instead of being half-understood. Defaults
match the CRD's, so a body that never went through the API server (unit tests) reads the same.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "Accuracy",
    "Analysis",
    "Autoscaling",
    "Batching",
    "BuildSpec",
    "Calibration",
    "Judge",
    "ModelSource",
    "OutputAgreement",
    "Profile",
    "Resources",
    "RolloutSpec",
    "ServingSpec",
    "Shadow",
    "StorageSpec",
    "Target",
    "Toleration",
    "TrtEngineSpec",
]

Precision = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]
Backend = Literal["tensorrt", "onnxruntime"]
Dim = Annotated[int, Field(ge=1, le=1048576)]
Dims = Annotated[list[Dim], Field(min_length=1, max_length=8)]
# pvc://CLAIM/path, s3://BUCKET/key, gs://BUCKET/object, https://HOST/path (no user:password@),
# hf://ORG/REPO[@REVISION]/path, or a relative path on the storage claim (the CRD's pattern).
URI_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/\S+"
    r"|(s3|gs)://[a-z0-9][-a-z0-9._]{1,220}[a-z0-9]/\S+"
    r"|https://[^\s/@?#]+/\S+"
    r"|hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[^\s/]+)?/\S+"
    r"|[A-Za-z0-9_][^\s:]*)$"
)


def _no_dotdot(uri: str) -> str:
    if ".." in uri:  # the CRD's CEL rule on every URI
        raise ValueError("a URI must not contain '..'")
    return uri


Uri = Annotated[str, Field(max_length=1024, pattern=URI_PATTERN), AfterValidator(_no_dotdot)]
Sha256 = Annotated[str, Field(pattern=r"^[a-f0-9]{64}$")]
SecretName = Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
# An object name (DNS subdomain), as the CRD's route references take it.
Name = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
Quantity = Annotated[
    str, Field(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
]
# What the worker's calibrator does (trtops_worker.builder.precision.MODELOPT_CALIBRATION_METHODS):
# ModelOpt offers entropy and max; a method it would silently replace is refused at admission.
CalibrationMethod = Literal["entropy", "max"]
# A label key ([DNS subdomain/]name) or "" (with operator Exists: every key); a label value.
TaintKey = Annotated[
    str,
    Field(
        max_length=316,
        pattern=r"^((([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
    ),
]
TaintValue = Annotated[
    str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
]


AUTOSCALING_NEEDS_WEIGHTS = (
    "spec.serving.autoscaling needs a weighted traffic router (gatewayAPI or istio):"
    " the replicas router splits traffic by pod counts, which an autoscaler changes"
)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


def _https_pinned(uri: str, sha256: str | None, field: str) -> None:
    # The CRD's CEL rule, with its message: a web server gives no integrity of its own.
    if uri.startswith("https://") and not sha256:
        raise ValueError(f"{field}.sha256 is required when {field}.uri is https://")


class ModelSource(_Model):
    uri: Uri
    sha256: Sha256 | None = None
    credentials_secret: SecretName | None = None

    @model_validator(mode="after")
    def _pinned(self) -> ModelSource:
        _https_pinned(self.uri, self.sha256, "spec.model")
        return self


class Calibration(_Model):
    uri: Uri
    sha256: Sha256 | None = None
    method: CalibrationMethod = "entropy"
    max_samples: Annotated[int, Field(ge=1, le=100000)] = 512

    @model_validator(mode="after")
    def _pinned(self) -> Calibration:
        _https_pinned(self.uri, self.sha256, "spec.build.calibration")
        return self


class Profile(_Model):
    input: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^\S+$")]
    min: Dims
    opt: Dims
    max: Dims

    @model_validator(mode="after")
    def _ordered(self) -> Profile:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"profile {self.input}: min, opt and max must have the same rank")
        if any(a > b or b > c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(f"profile {self.input}: needs min <= opt <= max in every dimension")
        return self

    def flag(self) -> str:
        """``NAME:MIN:OPT:MAX`` as the worker's ``--profile`` takes it."""
        dims = ["x".join(str(d) for d in shape) for shape in (self.min, self.opt, self.max)]
        return ":".join([self.input, *dims])


class Target(_Model):
    gpu_product: Annotated[
        str,
        Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"),
    ]


class Toleration(_Model):
    """A core/v1 Toleration as the CRD admits it; passed to the pod spec as written, so an unset
    ``operator`` stays unset (Kubernetes reads it as Equal) and a round trip shows no diff."""

    key: TaintKey | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: TaintValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0, le=31536000)] | None = None

    @model_validator(mode="after")
    def _rules(self) -> Toleration:
        # The CRD's CEL rules, with the same messages.
        if self.operator == "Exists" and self.value:
            raise ValueError(
                "operator Exists matches every value of the key: drop value, or use operator Equal"
            )
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(
                "tolerationSeconds only applies to effect NoExecute:"
                " set effect NoExecute, or drop tolerationSeconds"
            )
        if not self.key and self.operator != "Exists":
            raise ValueError(
                "an empty key matches every taint and needs operator Exists:"
                " set key, or set operator Exists"
            )
        return self

    def pod_json(self) -> dict[str, Any]:
        """The toleration as a pod spec lists it (unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Tolerations = Annotated[list[Toleration], Field(max_length=16)]


class Validation(_Model):
    uri: Uri
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _pinned(self) -> Validation:
        _https_pinned(self.uri, self.sha256, "spec.build.accuracy.validation")
        return self


class Accuracy(_Model):
    validation: Validation
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    max_mean_abs_error: Annotated[float, Field(ge=0, le=1000000)] | None = None
    min_cosine_similarity: Annotated[float, Field(ge=-1, le=1)] | None = None
    max_relative_error: Annotated[float, Field(ge=0, le=1000000)] | None = None
    # Output name -> kind; decides the default thresholds (trtops_worker.builder.accuracy).
    output_kinds: (
        Annotated[
            dict[str, Literal["class-scores", "embedding", "regression"]], Field(max_length=64)
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _a_threshold(self) -> Accuracy:
        thresholds = (
            self.min_top1_agreement,
            self.max_mean_abs_error,
            self.min_cosine_similarity,
            self.max_relative_error,
            self.output_kinds,
        )
        if all(t is None for t in thresholds):
            raise ValueError(
                "spec.build.accuracy needs at least one of minTop1Agreement, maxMeanAbsError,"
                " minCosineSimilarity, maxRelativeError, outputKinds"
            )
        return self


class BuildSpec(_Model):
    precision: Precision = "fp16"
    calibration: Calibration | None = None
    profiles: Annotated[list[Profile], Field(max_length=16)] = []
    optimization_level: Annotated[int, Field(ge=0, le=5)] = 3
    workspace_mib: Annotated[int, Field(ge=16, le=1048576, alias="workspaceMiB")] = 2048
    targets: Annotated[list[Target], Field(max_length=8)] = []
    accuracy: Accuracy | None = None
    timeout_seconds: Annotated[int, Field(ge=60, le=172800)] = 3600
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = 1
    node_selector: Annotated[dict[str, str], Field(max_length=16)] = {}
    tolerations: Tolerations = []

    @model_validator(mode="after")
    def _rules(self) -> BuildSpec:
        if self.precision in ("int8", "fp8") and self.calibration is None:
            raise ValueError(
                "spec.build.calibration is required when spec.build.precision is int8 or fp8"
            )
        products = [t.gpu_product for t in self.targets]
        if len(set(products)) != len(products):
            raise ValueError("spec.build.targets must not repeat a gpuProduct")
        inputs = [p.input for p in self.profiles]
        if len(set(inputs)) != len(inputs):
            raise ValueError("spec.build.profiles must name each input at most once")
        return self


class StorageSpec(_Model):
    claim_name: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class Batching(_Model):
    max_batch_size: Annotated[int, Field(ge=1, le=4096)]
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=1000000)] = 1000


class CpuMemory(_Model):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(_Model):
    requests: CpuMemory | None = None
    limits: CpuMemory | None = None


class Autoscaling(_Model):
    """A HorizontalPodAutoscaler per serving Deployment on a per-pod gauge of the worker's."""

    min_replicas: Annotated[int, Field(ge=1, le=100)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=100)]
    metric: Literal["inflight", "queue"] = "inflight"
    target_average_value: Annotated[
        str, Field(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?(m|k)?$")
    ] = "4"

    @model_validator(mode="after")
    def _range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("spec.serving.autoscaling.minReplicas must not exceed maxReplicas")
        return self


class ServingSpec(_Model):
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    autoscaling: Autoscaling | None = None
    backend: Backend = "tensorrt"
    cpu_fallback: bool = False
    node_selector: Annotated[dict[str, str], Field(max_length=16)] = {}
    tolerations: Tolerations = []
    model_name: (
        Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")] | None
    ) = None
    batching: Batching | None = None
    resources: Resources | None = None


class GatewayAPIRouter(_Model):
    http_route: Name


class ReplicasRouter(_Model):
    pass


class IstioRouter(_Model):
    virtual_service: Name
    routes: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=16)] = []


class TrafficRouter(_Model):
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


class Step(_Model):
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


class PrometheusSource(_Model):
    # The CRD's pattern: no user info, query or fragment. Which addresses may be queried is the
    # installer's choice (``--prometheus-address``), checked when the analysis runs.
    address: Annotated[str, Field(max_length=512, pattern=r"^https?://[^\s/@?#]+(/[^\s?#]*)?$")]


class OutputAgreement(_Model):
    """The least agreement of the canary's outputs with stable's on shadow requests
    (``docs/experiments.md``): ``cosine``, the mean cosine similarity of output rows;
    ``top1``, the share of positions whose arg-max agrees. The worst output decides."""

    cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    top1: Annotated[float, Field(ge=0, le=1)] | None = None


class Slo(_Model):
    p99_latency_ms: Annotated[float, Field(ge=0.001, le=600000)] | None = None
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_latency_ratio_to_stable: Annotated[float, Field(ge=1, le=100)] | None = None
    min_output_agreement: OutputAgreement | None = None


class Shadow(_Model):
    """A ``percent`` of the requests stable answers are also sent to the canary and the
    outputs compared (``docs/experiments.md``); ``minSamples``: output rows compared before
    ``slo.minOutputAgreement`` is judged."""

    percent: Annotated[float, Field(gt=0, le=100)]
    min_samples: Annotated[int, Field(ge=1, le=1000000000)] = 50


class Judge(_Model):
    """How the canary is compared with stable (``docs/canary.md``, "The judge")."""

    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    min_latency_effect: Annotated[float, Field(ge=1.01, le=100)] = 1.25
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_client_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.05
    catastrophic_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.25


class Analysis(_Model):
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


class RolloutSpec(_Model):
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


class TrtEngineSpec(_Model):
    model: ModelSource
    build: BuildSpec = BuildSpec()
    storage: StorageSpec
    serving: ServingSpec = ServingSpec()
    rollout: RolloutSpec | None = None

    @model_validator(mode="after")
    def _backend_rules(self) -> TrtEngineSpec:
        if self.serving.backend == "tensorrt" and not self.build.targets:
            raise ValueError(
                "spec.build.targets must name at least one gpuProduct"
                " when spec.serving.backend is tensorrt"
            )
        if self.serving.backend == "onnxruntime" and self.build.targets:
            raise ValueError(
                "spec.build.targets must be empty when spec.serving.backend is onnxruntime"
            )
        if (
            self.serving.autoscaling is not None
            and self.rollout is not None
            and self.rollout.traffic_router.replicas is not None
        ):
            raise ValueError(AUTOSCALING_NEEDS_WEIGHTS)
        if self.serving.backend == "onnxruntime" and self.build.precision in ("tf32", "fp8"):
            raise ValueError(
                "spec.build.precision tf32 and fp8 exist only on spec.serving.backend tensorrt"
            )
        if self.serving.backend != "tensorrt" and self.serving.cpu_fallback:
            raise ValueError(
                "spec.serving.cpuFallback only applies to spec.serving.backend tensorrt"
            )
        return self

    def target_products(self) -> list[str | None]:
        """The GPU products to build for; ``[None]``: the one CPU build (onnxruntime)."""
        if self.serving.backend == "onnxruntime":
            return [None]
        return [t.gpu_product for t in self.build.targets]
