"""``spec.serving``: the serving Deployment's replicas, autoscaling, backend, batching and
resources."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trtops_operator.models.base import Backend, Quantity, SpecModel
from trtops_operator.models.build import Tolerations
from trtops_operator.models.sampling import Sampling


class Batching(SpecModel):
    max_batch_size: Annotated[int, Field(ge=1, le=4096)]
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=1000000)] = 1000


class CpuMemory(SpecModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(SpecModel):
    requests: CpuMemory | None = None
    limits: CpuMemory | None = None


class Autoscaling(SpecModel):
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


class ServingSpec(SpecModel):
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
    sampling: Sampling | None = None
