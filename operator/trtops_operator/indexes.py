"""What the kopf indexes store and how a reconcile reads them, without kopf.

The handlers register one kopf index per kind with the ``*_entry`` functions below; a reconcile
reads one engine's view of them through :func:`observed`. Keys are ``(namespace, name)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any

from trtops_operator import manifests
from trtops_operator.observation import (
    OWNER_KEY,
    DeploymentObs,
    Observed,
    summarize_deployment,
    summarize_job,
    summarize_pod,
    summarize_serving_pod,
)

__all__ = [
    "INDEXES",
    "deployment_entry",
    "engine_entry",
    "hash_entry",
    "job_entry",
    "observed",
    "plan_entry",
    "pod_entry",
    "serving_pod_entry",
    "slim",
]

# The kopf index names (the handlers' function names): what ``observed`` reads.
INDEXES = (
    "engine_index",
    "plan_index",
    "job_index",
    "build_pod_index",
    "serving_pod_index",
    "deployment_index",
    "service_index",
    "pdb_index",
    "hpa_index",
    "network_policy_index",
)


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a TrtEngine body a reconcile reads (kopf bodies hold much more)."""
    meta = body["metadata"]
    return {
        # Annotations carry the manual canary commands (promote/abort/pause/resume).
        "metadata": {
            k: meta.get(k)
            for k in (
                "name",
                "namespace",
                "uid",
                "generation",
                "annotations",
                "resourceVersion",  # to tell the operator's own write from an older copy
                "deletionTimestamp",
                "finalizers",
            )
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def engine_entry(namespace: str | None, name: str, body: Mapping[str, Any]) -> dict[Hashable, Any]:
    return {(namespace, name): slim(body)}


def plan_entry(
    namespace: str | None, status: Mapping[str, Any], uid: str | None
) -> dict[Hashable, Any]:
    # Remember which engine recorded each plan: an engine's own plan is never "reused".
    # An experiment's variant plans too: promoting a variant then builds nothing.
    variants = (status.get("experiment") or {}).get("variants") or []
    plans = [*(status.get("plans") or []), *(p for v in variants for p in v.get("plans") or [])]
    return {(namespace, p["job"]): {**p, OWNER_KEY: uid} for p in plans if p.get("job")}


def job_entry(namespace: str | None, name: str, body: Mapping[str, Any]) -> dict[Hashable, Any]:
    return {(namespace, name): summarize_job(body)}


def pod_entry(namespace: str | None, body: Mapping[str, Any]) -> dict[Hashable, Any]:
    pod = summarize_pod(body)
    return {(namespace, pod.job): pod}


def serving_pod_entry(namespace: str | None, body: Mapping[str, Any]) -> dict[Hashable, Any]:
    """Only pods that refused their plan or are stuck are kept: a healthy fleet costs no index
    memory (its Deployments' status tells the rest)."""
    pod = summarize_serving_pod(body)
    stuck = pod.incompatible is not None or pod.stuck is not None
    return {(namespace, pod.engine): pod} if stuck else {}


def deployment_entry(namespace: str | None, body: Mapping[str, Any]) -> dict[Hashable, Any]:
    dep = summarize_deployment(body)
    return {(namespace, dep.engine): dep}


def hash_entry(namespace: str | None, name: str, body: Mapping[str, Any]) -> dict[Hashable, Any]:
    return {(namespace, name): manifests.stamped_hash(body)}


class _NsView(Mapping[str, Any]):
    """One namespace of a kopf index keyed by (namespace, name), first value per key."""

    def __init__(self, index: Any, namespace: str) -> None:
        self.index, self.namespace = index, namespace

    def __getitem__(self, name: str) -> Any:
        for value in self.index[(self.namespace, name)]:
            return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (k[1] for k in list(self.index) if k[0] == self.namespace)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _AllView(_NsView):
    """One namespace of a kopf index, every value per key."""

    def __getitem__(self, name: str) -> list[Any]:
        if (self.namespace, name) not in self.index:
            raise KeyError(name)
        return list(self.index[(self.namespace, name)])


def observed(namespace: str, name: str, idx: Mapping[str, Any]) -> Observed:
    """What exists for engine ``namespace/name``, read from the kopf indexes ``idx``."""
    deployments = idx["deployment_index"]
    deps: dict[str, DeploymentObs] = {}
    if (namespace, name) in deployments:
        deps = {d.name: d for d in deployments[(namespace, name)]}
    return Observed(
        jobs=_NsView(idx["job_index"], namespace),
        pods=_AllView(idx["build_pod_index"], namespace),
        known_plans=_NsView(idx["plan_index"], namespace),
        deployments=deps,
        services=_NsView(idx["service_index"], namespace),
        pdbs=_NsView(idx["pdb_index"], namespace),
        serving_pods=list(idx["serving_pod_index"].get((namespace, name), [])),
        hpas=_NsView(idx["hpa_index"], namespace),
        network_policies=_NsView(idx.get("network_policy_index") or {}, namespace),
    )
