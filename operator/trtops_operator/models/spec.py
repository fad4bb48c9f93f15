"""``TrtEngineSpec``: the whole spec, with the rules that tie its parts together."""

from __future__ import annotations

from pydantic import model_validator

from trtops_operator.models.base import SpecModel
from trtops_operator.models.build import BuildSpec, ModelSource, StorageSpec
from trtops_operator.models.cost import Cost
from trtops_operator.models.experiment import Experiment, experiment_rules
from trtops_operator.models.rollout import RolloutSpec
from trtops_operator.models.serving import ServingSpec

AUTOSCALING_NEEDS_WEIGHTS = (
    "spec.serving.autoscaling needs a weighted traffic router (gatewayAPI or istio):"
    " the replicas router splits traffic by pod counts, which an autoscaler changes"
)

SAMPLE_NEEDS_SAMPLING = (
    "source: sample (spec.build.calibration or spec.build.accuracy.validation) needs"
    " spec.serving.sampling.enabled: true, or nothing is ever sampled"
)


class TrtEngineSpec(SpecModel):
    model: ModelSource
    build: BuildSpec = BuildSpec()
    storage: StorageSpec
    serving: ServingSpec = ServingSpec()
    rollout: RolloutSpec | None = None
    cost: Cost | None = None
    experiment: Experiment | None = None

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
        if self.uses_sample() and not (self.serving.sampling and self.serving.sampling.enabled):
            raise ValueError(SAMPLE_NEEDS_SAMPLING)
        if self.experiment is not None:
            experiment_rules(self.experiment, self.build, self.serving.backend, self.rollout)
        return self

    def uses_sample(self) -> bool:
        """Whether a build reads the request sample (calibration or validation)."""
        build = self.build
        sources = [
            build.calibration.source if build.calibration else None,
            build.accuracy.validation.source if build.accuracy else None,
        ]
        return "sample" in sources

    def target_products(self) -> list[str | None]:
        """The GPU products to build for; ``[None]``: the one CPU build (onnxruntime)."""
        if self.serving.backend == "onnxruntime":
            return [None]
        return [t.gpu_product for t in self.build.targets]
