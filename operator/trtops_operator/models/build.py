"""``spec.model``, ``spec.build`` and ``spec.storage``: what is built, how, and where it is kept."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from trtops_operator.models.base import (
    CalibrationMethod,
    Dims,
    Precision,
    SecretName,
    Sha256,
    SpecModel,
    TaintKey,
    TaintValue,
    Uri,
    https_pinned,
)
from trtops_operator.models.sampling import Cron, RegressionGate, SampleSourced


class ModelSource(SpecModel):
    uri: Uri
    sha256: Sha256 | None = None
    credentials_secret: SecretName | None = None

    @model_validator(mode="after")
    def _pinned(self) -> ModelSource:
        https_pinned(self.uri, self.sha256, "spec.model")
        return self


class Calibration(SampleSourced):
    uri: Uri
    sha256: Sha256 | None = None
    method: CalibrationMethod = "entropy"
    max_samples: Annotated[int, Field(ge=1, le=100000)] = 512

    @model_validator(mode="after")
    def _pinned(self) -> Calibration:
        https_pinned(self.uri, self.sha256, "spec.build.calibration")
        return self


class Profile(SpecModel):
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


class Target(SpecModel):
    gpu_product: Annotated[
        str,
        Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"),
    ]


class Toleration(SpecModel):
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


class Validation(SampleSourced):
    uri: Uri
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _pinned(self) -> Validation:
        https_pinned(self.uri, self.sha256, "spec.build.accuracy.validation")
        return self


class Accuracy(SpecModel):
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


class BuildSpec(SpecModel):
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
    schedule: Cron | None = None  # rebuild on this cron schedule (UTC), through regressionGate
    regression_gate: RegressionGate = RegressionGate()

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


class StorageSpec(SpecModel):
    claim_name: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
