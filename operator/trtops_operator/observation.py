"""What exists, as the reconcile sees it: compact, typed summaries of the Jobs, pods and
Deployments an engine owns. Pure: the handlers' kopf indexes store these (``summarize_*``) so a
reconcile reads what exists without an API request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from trtops_worker.contract import (
    BUILD_CONTAINER,
    FETCH_CONTAINER,
    LABEL_ENGINE,
    LABEL_REVISION,
    LABEL_TARGET,
    SERVE_CONTAINER,
    PlanIncompatibleResult,
)

from trtops_operator import manifests

__all__ = [
    "OWNER_KEY",
    "DeploymentObs",
    "JobObs",
    "Observed",
    "PodObs",
    "ServingPodObs",
    "Stuck",
    "pod_stuck",
    "summarize_deployment",
    "summarize_job",
    "summarize_pod",
    "summarize_serving_pod",
]

OWNER_KEY = "_recordedBy"  # in plan index entries: the uid of the engine whose status holds it


@dataclass(frozen=True)
class JobObs:
    name: str
    owners: tuple[str, ...]  # uids of the TrtEngines that own the Job
    owner_names: tuple[str, ...] = ()
    succeeded: bool = False
    failed: bool = False
    failure_reason: str = ""
    failure_message: str = ""
    failed_at: str = ""  # the Failed condition's lastTransitionTime


@dataclass(frozen=True)
class Stuck:
    """Why a pod cannot make progress, in the cluster's own words (``reason`` is the kubelet's
    or scheduler's: Unschedulable, ImagePullBackOff, ErrImagePull, CrashLoopBackOff, OOMKilled,
    ...; ``message`` what it said)."""

    reason: str
    message: str


@dataclass(frozen=True)
class PodObs:
    name: str
    job: str
    created: str
    phase: str
    message: str | None = None  # the build container's termination message
    stuck: Stuck | None = None


@dataclass(frozen=True)
class ServingPodObs:
    """A serving pod, as far as the reconcile cares: whether it refused its plan."""

    name: str
    engine: str
    revision: str
    target: str  # the GPU product label value, or "cpu"
    incompatible: PlanIncompatibleResult | None = None  # from its last termination message
    stuck: Stuck | None = None  # why it cannot progress (pod_stuck)


@dataclass(frozen=True)
class DeploymentObs:
    name: str
    engine: str
    spec_hash: str
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0  # desired (spec)
    status_replicas: int = 0
    updated: int = 0
    available: int = 0

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated >= self.replicas
            and self.available >= self.replicas
            and self.status_replicas <= self.replicas
        )


@dataclass(frozen=True)
class Observed:
    """What exists, as far as one engine cares (all in the engine's namespace)."""

    jobs: Mapping[str, JobObs] = field(default_factory=dict)  # by Job name
    pods: Mapping[str, Sequence[PodObs]] = field(default_factory=dict)  # by Job name
    known_plans: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by Job name
    deployments: Mapping[str, DeploymentObs] = field(default_factory=dict)  # this engine's
    services: Mapping[str, str] = field(default_factory=dict)  # name -> spec hash
    pdbs: Mapping[str, str] = field(default_factory=dict)  # name -> spec hash
    serving_pods: Sequence[ServingPodObs] = ()  # this engine's serving pods that are stuck
    hpas: Mapping[str, str] = field(default_factory=dict)  # this engine's, name -> spec hash
    network_policies: Mapping[str, str] = field(default_factory=dict)  # name -> spec hash


def _conditions(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (body.get("status") or {}).get("conditions") or []}


def _owner_refs(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return [r for r in refs if r.get("kind") == "TrtEngine"]


def summarize_job(body: Mapping[str, Any]) -> JobObs:
    conds = _conditions(body)
    status = body.get("status") or {}
    # FailureTarget is the Job controller's verdict (deadline, backoff limit, pod failure
    # policy); Failed follows once every pod is gone, which a lost node can delay forever.
    verdict = next(
        (conds[t] for t in ("Failed", "FailureTarget") if conds.get(t, {}).get("status") == "True"),
        {},
    )
    failed = bool(verdict)
    complete = conds.get("Complete", {}).get("status") == "True" or bool(status.get("succeeded"))
    refs = _owner_refs(body)
    return JobObs(
        name=body["metadata"]["name"],
        owners=tuple(r["uid"] for r in refs if r.get("uid")),
        owner_names=tuple(r["name"] for r in refs),
        succeeded=complete and not failed,
        failed=failed,
        failure_reason=str(verdict.get("reason") or ""),
        failure_message=str(verdict.get("message") or ""),
        failed_at=str(verdict.get("lastTransitionTime") or ""),
    )


# Container waiting reasons that do not pass by themselves (the kubelet's names).
STUCK_WAITING = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def pod_stuck(status: Mapping[str, Any]) -> Stuck | None:
    """What keeps a pod from progressing, from its status alone; None: nothing (yet).

    Sources: the scheduler's ``PodScheduled=False/Unschedulable`` condition (a missing claim,
    no node with the GPU product, an untolerated taint), a container waiting for a reason in
    ``STUCK_WAITING``, a container killed for memory (``OOMKilled``, now or last time)."""
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    for c in status.get("conditions") or []:
        scheduled = (c.get("type"), c.get("status"), c.get("reason"))
        if scheduled == ("PodScheduled", "False", "Unschedulable"):
            return Stuck("Unschedulable", str(c.get("message") or "no node fits the pod"))
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in containers:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            message = str(waiting.get("message") or "")
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    return Stuck("OOMKilled", _oom(cs))
            return Stuck(
                str(waiting["reason"]), f"container {cs.get('name')}: {message}".rstrip(": ")
            )
        if ((cs.get("state") or {}).get("terminated") or {}).get("reason") == "OOMKilled":
            return Stuck("OOMKilled", _oom(cs))
    return None


def _oom(cs: Mapping[str, Any]) -> str:
    return (
        f"container {cs.get('name')} was killed for running out of memory"
        f" (restarts: {cs.get('restartCount', 0)}); raise its memory limit"
    )


def summarize_pod(body: Mapping[str, Any]) -> PodObs:
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    message = None
    terminated: Mapping[str, Any] = {}
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == BUILD_CONTAINER:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            message = terminated.get("message")
    for cs in status.get("initContainerStatuses") or []:
        # The fetch init container reports only a failure (then the build never ran).
        done = (cs.get("state") or {}).get("terminated") or {}
        if cs.get("name") == FETCH_CONTAINER and done.get("exitCode") and message is None:
            message = done.get("message")
    stuck = pod_stuck(status)
    if stuck is None and terminated.get("reason") == "OOMKilled":
        # A build pod is never restarted: its OOM is final, and no result was written.
        stuck = Stuck("OOMKilled", _oom({"name": BUILD_CONTAINER}))
    return PodObs(
        name=meta["name"],
        job=labels.get("batch.kubernetes.io/job-name") or labels.get("job-name", ""),
        created=str(meta.get("creationTimestamp") or ""),
        phase=str(status.get("phase") or ""),
        message=message,
        stuck=stuck,
    )


def summarize_serving_pod(body: Mapping[str, Any]) -> ServingPodObs:
    """The serve container's refusal of its plan, from its current or last termination (a
    crash-looping pod shows it under ``lastState`` while it waits to restart)."""
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    incompatible = None
    for cs in (body.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != SERVE_CONTAINER:
            continue
        for state in (cs.get("state"), cs.get("lastState")):
            message = ((state or {}).get("terminated") or {}).get("message")
            if message and incompatible is None:
                try:
                    incompatible = PlanIncompatibleResult.model_validate_json(message)
                except ValidationError:
                    continue  # another failure: the Deployment's availability tells
    return ServingPodObs(
        name=meta["name"],
        engine=labels.get(LABEL_ENGINE, ""),
        revision=labels.get(LABEL_REVISION, ""),
        target=labels.get(LABEL_TARGET, ""),
        incompatible=incompatible,
        stuck=pod_stuck(body.get("status") or {}),
    )


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentObs:
    meta = body["metadata"]
    status = body.get("status") or {}
    return DeploymentObs(
        name=meta["name"],
        engine=(meta.get("labels") or {}).get(LABEL_ENGINE, ""),
        spec_hash=manifests.stamped_hash(body),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int((body.get("spec") or {}).get("replicas", 1)),
        status_replicas=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
    )
