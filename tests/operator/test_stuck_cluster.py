"""Stuck states on the real cluster: the scheduler's and Job controller's own words reach the
engine's status within one reconcile, and clear when the cause goes.

A missing claim needs no trick (the real scheduler refuses the pod). For the kubelet's states
(ImagePullBackOff, CrashLoopBackOff, OOMKilled) the test plays the kubelet of a Node that kwok
does not manage, writing the pod status a kubelet writes; everything else (scheduler, Job and
ReplicaSet controllers, the operator, the printer columns) is real.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from itertools import pairwise
from typing import Any

import pytest

from tests.operator.conftest import finish_build_pod
from tests.operator.test_cluster import (
    ACCURACY_REFUSAL,
    ENGINE,
    H100,
    OPERATOR,
    SUCCESS,
    Cluster,
)
from tests.support.cluster import kubectl, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd")]


@pytest.fixture
def cluster(k8s_api: Any, namespace: str) -> Cluster:
    return Cluster(k8s_api, namespace)


@pytest.fixture
def test_node(cluster: Cluster) -> Iterator[str]:
    """A Ready Node no kwok controller manages: its pods stay as the test writes them."""
    from kubernetes import client

    name = f"kubeletless-{cluster.ns}"[:63]
    res = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
    cluster.core.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"trtops.dev/test-node": name, "nvidia.com/gpu.product": H100},
            },
        }
    )
    cluster.core.patch_node_status(
        name,
        {
            "status": {
                "capacity": res,
                "allocatable": res,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            }
        },
    )
    yield name
    with contextlib.suppress(client.ApiException):
        cluster.core.delete_node(name)


def _on(node: str, where: str) -> Callable[[dict[str, Any]], None]:
    """Pods of ``where`` (build | serving) go to ``node`` and tolerate its taints."""

    def patch(spec: dict[str, Any]) -> None:
        # A node without a kubelet turns NotReady/unreachable: tolerate exactly those taints.
        lost = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
        spec.setdefault(where, {}).update(
            nodeSelector={"trtops.dev/test-node": node},
            tolerations=[{"key": k, "operator": "Exists"} for k in lost],
        )

    return patch


def _pod_of(cluster: Cluster, selector: str) -> str:
    def probe() -> str | None:
        pods = cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items
        bound = [p for p in pods if p.spec.node_name]
        return bound[0].metadata.name if bound else None

    return wait_for(probe, timeout=60, what=f"a scheduled pod ({selector})")


def _kubelet_writes(cluster: Cluster, pod: str, status: dict[str, Any]) -> None:
    cluster.core.patch_namespaced_pod_status(pod, cluster.ns, {"status": status})


def _waiting(container: str, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "phase": "Pending" if container == "build" else "Running",
        "containerStatuses": [
            {
                "name": container,
                "image": "worker",
                "imageID": "",
                "ready": False,
                "restartCount": extra.pop("restarts", 0),
                "state": {"waiting": {"reason": reason, "message": message}},
                **extra,
            }
        ],
    }


def _row(cluster: Cluster, name: str) -> dict[str, str]:
    """``kubectl get trt NAME -o wide`` as {COLUMN: value}."""
    out = kubectl("-n", cluster.ns, "get", "trt", name, "-o", "wide").splitlines()
    head = out[0]
    starts = [i for i, c in enumerate(head) if c != " " and (i == 0 or head[i - 1] == " ")]
    return {head[a:b].strip(): out[1][a:b].strip() for a, b in pairwise([*starts, None])}


def test_missing_claim_is_named_and_clears_when_the_claim_appears(
    cluster: Cluster,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
    request: pytest.FixtureRequest,
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv")  # no trt-plans claim in this namespace
        built = cluster.wait_condition("conv", "Built", "ClaimNotAllowed")
        assert "trt-plans" in built["message"], built
        assert cluster.condition("conv", "Ready")["reason"] == "ClaimNotAllowed"
        row = _row(cluster, "conv")
        assert (row["REASON"], row["BUILT"]) == ("ClaimNotAllowed", "ClaimNotAllowed"), row
        assert "trt-plans" in row["MESSAGE"], row
        request.getfixturevalue("plans_claim")  # the claim appears (refusals retry every 60 s)
        wait_for(
            lambda: cluster.condition("conv", "Built").get("reason") != "ClaimNotAllowed",
            timeout=150,
            what="Built no longer ClaimNotAllowed",
        )


def test_no_node_with_the_gpu_product_is_named_and_clears_when_one_joins(
    cluster: Cluster,
    plans_claim: str,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
) -> None:
    product = f"NVIDIA-B200-{cluster.ns[-6:]}"

    def target(spec: dict[str, Any]) -> None:
        spec["build"]["targets"] = [{"gpuProduct": product}]

    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv", target)
        built = cluster.wait_condition("conv", "Built", "Unschedulable")
        assert "node(s) didn't match Pod's node affinity/selector" in built["message"], built
        assert _row(cluster, "conv")["REASON"] == "Unschedulable"
        node = f"gpu-b200-{cluster.ns[-6:]}"
        cluster.core.create_node(  # kwok runs this one, as a real GPU node would join
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"nvidia.com/gpu.product": product, "type": "kwok"},
                },
                "status": {
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110",
                                 "nvidia.com/gpu": "8"},
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110",
                                    "nvidia.com/gpu": "8"},
                },
            }
        )  # fmt: skip
        try:
            wait_for(
                lambda: cluster.condition("conv", "Built").get("reason") != "Unschedulable",
                timeout=90,
                what="Built no longer Unschedulable",
            )
        finally:
            cluster.core.delete_node(node)


def test_image_pull_backoff_of_a_build_pod_is_named_and_clears(
    cluster: Cluster,
    test_node: str,
    plans_claim: str,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
) -> None:
    message = 'Back-off pulling image "registry.example/trtops-worker:nope"'
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv", _on(test_node, "build"))
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0].metadata.name
        pod = _pod_of(cluster, f"job-name={job}")
        _kubelet_writes(cluster, pod, _waiting("build", "ImagePullBackOff", message))
        built = cluster.wait_condition("conv", "Built", "ImagePullBackOff")
        assert message in built["message"]
        assert cluster.condition("conv", "Ready")["reason"] == "ImagePullBackOff"
        cluster.wait_warning("ImagePullBackOff")
        running = {
            "phase": "Running",
            "containerStatuses": [{"name": "build", "image": "worker", "imageID": "",
                                   "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        }  # fmt: skip
        _kubelet_writes(cluster, pod, running)
        cluster.wait_condition("conv", "Built", "Building")
        assert cluster.condition("conv", "Degraded")["reason"] == "AsExpected"


def test_a_build_job_past_its_deadline_is_named(
    cluster: Cluster,
    test_node: str,
    plans_claim: str,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv", _on(test_node, "build"))
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0].metadata.name
        _pod_of(cluster, f"job-name={job}")  # pending on a node whose kubelet never starts it
        # timeoutSeconds is at least 60: shorten this Job's deadline instead of waiting.
        cluster.batch.patch_namespaced_job(job, cluster.ns, {"spec": {"activeDeadlineSeconds": 1}})
        built = cluster.wait_condition("conv", "Built", "DeadlineExceeded")
        assert "deadline" in built["message"]
        assert cluster.condition("conv", "Ready")["reason"] == "BuildFailed"


@pytest.mark.parametrize(
    ("reason", "state"),
    [
        ("CrashLoopBackOff", {}),
        ("OOMKilled", {"lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}),
    ],
)
def test_a_stuck_serving_pod_is_named_on_ready_and_clears(
    cluster: Cluster,
    test_node: str,
    plans_claim: str,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
    reason: str,
    state: dict[str, Any],
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv", _on(test_node, "serving"))
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0].metadata.name
        finish_build_pod(cluster.api, cluster.ns, cluster.build_pod(job), SUCCESS)
        pod = _pod_of(cluster, "trtops.dev/engine=conv,trtops.dev/component=serve")
        crash = _waiting(
            "serve",
            "CrashLoopBackOff",
            "back-off 40s restarting failed container=serve",
            restarts=3,
            **copy.deepcopy(state),
        )
        _kubelet_writes(cluster, pod, crash)
        ready = cluster.wait_condition("conv", "Ready", reason)
        assert f"pod {pod}" in ready["message"]
        assert cluster.condition("conv", "Degraded")["reason"] == reason
        assert _row(cluster, "conv")["REASON"] == reason
        healthy = {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "serve", "image": "worker", "imageID": "",
                                   "ready": True, "restartCount": 3,
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        }  # fmt: skip
        _kubelet_writes(cluster, pod, healthy)
        wait_for(
            lambda: cluster.condition("conv", "Degraded").get("reason") != reason,
            timeout=60,
            what=f"Degraded no longer {reason}",
        )


def test_wide_columns_show_what_serves_and_a_refused_newer_revision(
    cluster: Cluster, plans_claim: str, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv")
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0].metadata.name
        finish_build_pod(cluster.api, cluster.ns, cluster.build_pod(job), SUCCESS)
        cluster.wait_condition("conv", "Ready", "Serving")
        serving = cluster.get("conv")["status"]["stable"]["revision"]
        spec = copy.deepcopy(ENGINE["spec"])
        spec["build"].update(precision="int8", calibration={"uri": "calib.npz"})
        cluster.custom.patch_namespaced_custom_object(
            "trtops.dev", "v1alpha1", cluster.ns, "trtengines", "conv", {"spec": spec}
        )
        second = wait_for(
            lambda: next((j for j in cluster.jobs() if j.metadata.name != job), None),
            timeout=60,
            what="the int8 build Job",
        ).metadata.name
        finish_build_pod(cluster.api, cluster.ns, cluster.build_pod(second), ACCURACY_REFUSAL, 14)
        cluster.wait_condition("conv", "Built", "AccuracyGateFailed")
        row = wait_for(
            lambda: r if "refused" in (r := _row(cluster, "conv"))["MESSAGE"] else None,
            timeout=30,
            what="Ready's message tells the refusal",
        )
    assert row["READY"] == "True"
    assert row["SERVING"] == serving
    assert row["PRECISION"] == "fp16"  # what serves, not what the spec asks for
    assert row["WANTS"] == "int8"
    assert row["BUILT"] == "AccuracyGateFailed"
    assert row["LATEST"] != serving
    assert "refused: AccuracyGateFailed" in row["MESSAGE"]
