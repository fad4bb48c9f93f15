"""Plan compatibility, pure: when a serving pod refused its plan (``PlanIncompatible``: the plan
was built for another GPU compute capability than the pod's), pin that GPU product to the pod's
compute capability, so its next build runs, and its pods serve, on such GPUs only.

A pin is set once per product and never changed: a second refusal (the pinned plan refused too,
or a pod of a third compute capability) is reported, never rebuilt, so the operator cannot
loop between plans. A refusal for another TensorRT release is reported only: the worker image
decides the release, and a rebuild on the same image cannot change it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trtops_operator import keys
from trtops_operator.decision import Event
from trtops_operator.observation import ServingPodObs

__all__ = ["Pins", "decide_pins"]


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


@dataclass
class Pins:
    pins: dict[str, str]  # GPU product -> compute capability, old and new
    events: list[Event] = field(default_factory=list)


def decide_pins(
    old: Mapping[str, str] | None, refused: Sequence[ServingPodObs], revision: str | None
) -> Pins:
    """Pins after this pass: ``old`` plus one per product whose pod of ``revision`` (the
    revision last rolled out) refused a plan built for another compute capability."""
    out = Pins(dict(old or {}))
    for pod in refused:
        report = pod.incompatible
        if report is None or pod.revision != revision or pod.target == keys.CPU_TARGET:
            continue
        pod_cc = report.pod.get("computeCapability", "")
        plan_cc = report.plan.get("computeCapability", "")
        same_release = _release(report.pod.get("tensorrtVersion", "")) == _release(
            report.plan.get("tensorrtVersion", "")
        )
        if pod.target in out.pins or not pod_cc or pod_cc == plan_cc or not same_release:
            continue
        out.pins[pod.target] = pod_cc
        out.events.append(
            Event(
                "Warning",
                "PlanIncompatible",
                f"{pod.target}: pod {pod.name} has compute capability {pod_cc}, its plan was"
                f" built for {plan_cc}: building a plan on {pod.target} GPUs of compute"
                f" capability {pod_cc}, and serving there only",
            )
        )
    return out
