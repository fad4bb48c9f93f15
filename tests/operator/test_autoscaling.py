"""Autoscaling that never fights the rollout, on the pure reconcile: a small world plays the
API server, the build Jobs and each HorizontalPodAutoscaler (HPAs scale to the larger of their
``minReplicas`` and what the load asks for), and the test walks an engine through its first
revision, a canary, and a promotion, reconcile by reconcile."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError
from trtops_operator import manifests
from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec
from trtops_operator.observation import DeploymentObs, JobObs, Observed, PodObs
from trtops_operator.reconcile import decide

CONFIG = OperatorConfig(worker_image="w:1")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def spec(precision: str = "fp32") -> dict[str, Any]:
    return {
        "model": {"uri": "m.onnx"},
        "build": {"precision": precision},
        "serving": {
            "backend": "onnxruntime",
            "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "targetAverageValue": "4"},
        },
        "storage": {"claimName": "plans"},
        "rollout": {
            "trafficRouter": {"gatewayAPI": {"httpRoute": "route"}},
            "steps": [{"setWeight": 20, "pauseSeconds": 60}, {"setWeight": 50, "pauseSeconds": 60}],
        },
    }


@dataclass
class World:
    """The cluster as the operator sees it, with HPAs that act."""

    body: dict[str, Any]
    load_pods: dict[str, int] = field(default_factory=dict)  # revision -> pods its load needs
    jobs: dict[str, JobObs] = field(default_factory=dict)
    pods: dict[str, list[PodObs]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # as applied
    replicas: dict[str, int] = field(default_factory=dict)  # live spec.replicas (HPA-set)
    hpas: dict[str, dict[str, Any]] = field(default_factory=dict)
    now: dt.datetime = T0
    applied_replicas: list[str] = field(default_factory=list)  # Deployments applied with replicas
    weights: list[int] = field(default_factory=list)

    def observed(self) -> Observed:
        deps = {
            n: DeploymentObs(n, "e", manifests.stamped_hash(d), 1, 1, r, r, r, r)
            for n, d in self.deployments.items()
            for r in [self.replicas[n]]
        }
        hpas = {n: manifests.stamped_hash(h) for n, h in self.hpas.items()}
        return Observed(jobs=self.jobs, pods=self.pods, deployments=deps, hpas=hpas)

    def reconcile(self) -> Any:
        d = decide(self.body, self.observed(), CONFIG, self.now.isoformat().replace("+00:00", "Z"))
        for job in d.create:  # every build succeeds at once
            name = job["metadata"]["name"]
            self.jobs[name] = JobObs(name, ("u1",), succeeded=True)
            result = {"ok": True, "key": name, "path": f"/plans/{name}", "precision": "fp32"}
            self.pods[name] = [PodObs(f"{name}-p", name, "t", "Succeeded", json.dumps(result))]
        for obj in d.apply:
            name = obj["metadata"]["name"]
            if obj["kind"] == "Deployment":
                if "replicas" in obj["spec"]:
                    self.applied_replicas.append(name)
                self.deployments[name] = obj
                self.replicas.setdefault(name, obj["spec"].get("replicas", 1))
            elif obj["kind"] == "HorizontalPodAutoscaler":
                self.hpas[name] = obj
        for kind, name in d.delete:
            {"Deployment": self.deployments, "HorizontalPodAutoscaler": self.hpas}.get(
                kind, {}
            ).pop(name, None)
        if d.status:
            self.body["status"] = {**self.body.get("status", {}), **d.status}
        if d.router is not None:
            self.weights.append(d.router.desired.get("e-canary", 0))
        self.scale()
        return d

    def scale(self) -> None:
        """Each HPA sets its Deployment's replicas; every pod becomes available at once."""
        for name, hpa in self.hpas.items():
            if name in self.deployments:
                rev = hpa["metadata"]["labels"]["trtops.dev/revision"]
                want = max(hpa["spec"]["minReplicas"], self.load_pods.get(rev, 0))
                self.replicas[name] = min(want, hpa["spec"]["maxReplicas"])

    def revision_pods(self, rev: str) -> int:
        return sum(
            self.replicas[n]
            for n, d in self.deployments.items()
            if d["metadata"]["labels"]["trtops.dev/revision"] == rev
        )

    def hpa_min(self, rev: str) -> int:
        (hpa,) = [
            h for h in self.hpas.values() if h["metadata"]["labels"]["trtops.dev/revision"] == rev
        ]
        return int(hpa["spec"]["minReplicas"])


def stable_revision(world: World) -> str:
    return str(world.body["status"]["stable"]["revision"])


def test_with_autoscaling_replicas_are_the_hpas_and_promotion_keeps_capacity() -> None:
    world = World(
        {"metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1}, "spec": spec()}
    )
    for _ in range(4):
        world.reconcile()
    r1 = stable_revision(world)
    (hpa,) = world.hpas.values()
    assert hpa["spec"]["scaleTargetRef"]["name"] in world.deployments
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "trtops_inflight_requests"
    assert hpa["spec"]["minReplicas"] == 2

    # Load grows: the HPA runs 6 stable pods and the operator leaves them be.
    world.load_pods[r1] = 6
    world.scale()
    world.reconcile()
    assert world.revision_pods(r1) == 6

    # A new revision: a canary at 20 %, sized by its own HPA's floor (20 % of 6 -> 2).
    world.body["spec"] = spec("fp16")
    world.body["metadata"]["generation"] = 2
    world.load_pods[r1] = 6
    for _ in range(3):
        world.reconcile()
    r2 = world.body["status"]["revision"]
    assert r2 != r1
    assert world.weights[-1] == 20
    assert world.hpa_min(r2) == 2
    assert world.revision_pods(r1) == 6  # stable keeps what its HPA chose

    # Walk the steps; at every reconcile, the traffic share on each side has its pods.
    promoted_at = None
    for minute in range(1, 10):
        world.now = T0 + dt.timedelta(minutes=minute)
        for _ in range(3):
            before_stable = world.revision_pods(r1)
            d = world.reconcile()
            if stable_revision(world) == r2 and promoted_at is None:
                promoted_at = minute
                # Traffic moved only once the canary ran at least the stable pod count.
                assert world.revision_pods(r2) >= before_stable == 6
        if promoted_at is not None:
            break
    assert promoted_at is not None, world.body["status"]
    for _ in range(2):
        world.reconcile()
    # The old revision is gone; the new stable HPA's floor is back to minReplicas, and the
    # HPA (not the operator) brings the pod count down at its own pace.
    assert world.revision_pods(r1) == 0
    assert world.hpa_min(r2) == 2
    assert world.revision_pods(r2) == 2 or world.load_pods.get(r2, 0) > 2
    assert len(world.hpas) == 1
    # Never once did the operator write a Deployment's replicas.
    assert world.applied_replicas == []
    assert d is not None


def test_autoscaling_needs_a_weighted_router() -> None:
    body = spec()
    body["rollout"]["trafficRouter"] = {"replicas": {}}
    with pytest.raises(ValidationError, match="needs a weighted traffic router"):
        TrtEngineSpec.model_validate(body)
    body["serving"]["autoscaling"] = {"minReplicas": 5, "maxReplicas": 2}
    with pytest.raises(ValidationError, match="minReplicas must not exceed maxReplicas"):
        TrtEngineSpec.model_validate(body)


def test_without_autoscaling_nothing_changes() -> None:
    body = spec()
    del body["serving"]["autoscaling"]
    world = World(
        {"metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1}, "spec": body}
    )
    for _ in range(4):
        world.reconcile()
    assert world.hpas == {}
    assert world.applied_replicas  # the operator sets the count itself
