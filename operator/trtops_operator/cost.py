"""What serving costs: price per hour of a revision's pods, and cost per 1M inferences.

Pure arithmetic on typed inputs; no cluster, no Prometheus. The inputs are what a cluster bill is
made of and what Kubernetes schedules by:

- the serving pod's resource requests: GPUs (``nvidia.com/gpu``, an extended resource, so its
  request equals its limit) and CPU cores (``requests.cpu``; a container with only a limit is
  given that limit as its request by the API server);
- how many such pods run (replicas);
- the prices, per GPU-hour and per CPU-core-hour, in one currency (``Prices``: the chart's
  ``cost`` values, or ``spec.cost`` of one engine);
- the measured throughput, in inferences per second (successful requests per second from the
  workers' ``trtops_requests_total``, summed over the revision's pods).

Formula (units in brackets)::

    pod_hourly   [currency/h]  = gpus * gpu_hour_price + cpu_cores * cpu_hour_price
    hourly       [currency/h]  = replicas * pod_hourly
    per_million  [currency/1M] = hourly / (throughput [1/s] * 3600 [s/h]) * 1_000_000

Memory is not priced: GPU and CPU prices of cloud instances already include their share of it,
and pricing it twice would make the CPU fallback look dearer than it is. An idle revision
(throughput 0) has no cost per inference (``None``), not an infinite one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from trtops_operator.keys import CPU_TARGET
from trtops_operator.models import Cost as Prices
from trtops_operator.models import ServingSpec, TrtEngineSpec

__all__ = [
    "GPU_RESOURCE",
    "PodFootprint",
    "Prices",
    "cost_per_million",
    "cpu_cores",
    "hourly_cost",
    "pod_footprint",
    "pod_hourly_cost",
    "prices_for",
    "serving_footprint",
]

GPU_RESOURCE = "nvidia.com/gpu"
SECONDS_PER_HOUR = 3600.0
MILLION = 1_000_000.0


class PodFootprint(BaseModel):
    """What one serving pod requests: whole GPUs and CPU cores (fractions allowed: ``500m`` is
    0.5)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: Annotated[float, Field(ge=0)] = 0.0
    cpu_cores: Annotated[float, Field(ge=0)] = 0.0


_CPU = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SCALE = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1024.0,
    "Mi": 1024.0**2,
    "Gi": 1024.0**3,
    "Ti": 1024.0**4,
}


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes quantity (``"500m"``, ``"2"``, ``1.5``) as a number (cores, GPUs).

    Raises ``ValueError`` on anything the CRD's quantity pattern does not admit.
    """
    if isinstance(quantity, int | float) and not isinstance(quantity, bool):
        return float(quantity)
    match = _CPU.match(str(quantity).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return float(match.group(1)) * _SCALE[match.group(2)]


def pod_footprint(pod_spec: Mapping[str, Any]) -> PodFootprint:
    """The GPUs and CPU cores a pod spec (core/v1 ``PodSpec`` as JSON) requests: the sum over its
    containers (init containers run before and are not counted), each container's request, or
    its limit where it sets no request (what the API server defaults the request to)."""
    totals = {GPU_RESOURCE: 0.0, "cpu": 0.0}
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for name in totals:
            quantity = requests.get(name, limits.get(name))
            if quantity is not None:
                totals[name] += cpu_cores(quantity)
    return PodFootprint(gpus=totals[GPU_RESOURCE], cpu_cores=totals["cpu"])


def pod_hourly_cost(pod: PodFootprint, prices: Prices) -> float:
    """Price of one pod for one hour, in ``prices.currency`` per hour."""
    return pod.gpus * prices.gpu_hour_price + pod.cpu_cores * prices.cpu_hour_price


def hourly_cost(pod: PodFootprint, replicas: float, prices: Prices) -> float:
    """Price of ``replicas`` such pods for one hour, in ``prices.currency`` per hour.
    ``replicas`` may be fractional (an average pod count over a window)."""
    if replicas < 0:
        raise ValueError(f"replicas must not be negative: {replicas}")
    return replicas * pod_hourly_cost(pod, prices)


def cost_per_million(
    pod: PodFootprint, replicas: float, prices: Prices, throughput: float
) -> float | None:
    """Cost of 1,000,000 inferences, in ``prices.currency``, for ``replicas`` pods of footprint
    ``pod`` answering ``throughput`` inferences per second between them. ``None`` when the
    throughput is 0 (nothing served: no cost per inference). Raises ``ValueError`` on a negative
    throughput or replica count."""
    if throughput < 0:
        raise ValueError(f"throughput must not be negative: {throughput}")
    if throughput == 0:
        return None
    return hourly_cost(pod, replicas, prices) / (throughput * SECONDS_PER_HOUR) * MILLION


def serving_footprint(
    serving: ServingSpec, backend: str | None, target: str | None
) -> PodFootprint:
    """What a serving pod of a plan requests, as ``manifests.render_deployment`` writes it: one GPU
    for a TensorRT plan of a GPU product (``target`` is the product, or ``"cpu"``), and the CPU
    cores of ``spec.serving.resources`` (request, else limit; none: 0 cores, a pod that gets
    whatever CPU is left on its node)."""
    gpus = 1.0 if backend == "tensorrt" and target not in (None, CPU_TARGET) else 0.0
    resources = serving.resources
    cpu = None
    if resources is not None:
        cpu = (resources.requests and resources.requests.cpu) or (
            resources.limits and resources.limits.cpu
        )
    return PodFootprint(gpus=gpus, cpu_cores=cpu_cores(cpu) if cpu else 0.0)


def prices_for(spec: TrtEngineSpec, default: Prices | None) -> Prices | None:
    """The prices an engine is costed at: its ``spec.cost``, else the operator's (the chart's
    ``cost`` values); ``None`` when neither sets one (no cost is reported)."""
    return spec.cost if spec.cost is not None else default
