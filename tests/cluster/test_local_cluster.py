"""The local control plane behaves like a cluster: real controllers turn a Deployment into Ready
pods and a Job into a succeeded pod (kwok plays the kubelet), a trtops build pod runs until a test
finishes it, GPU nodes are schedulable by product, and a kopf operator runs against it."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.support.cluster import kubectl, wait_for

pytestmark = pytest.mark.cluster


def _container(name: str, **extra: Any) -> client.V1Container:
    return client.V1Container(name=name, image="example.invalid/none:0", **extra)


# kwok's fake nodes (hack/cluster.sh); without it the scheduler may pick the local node agent's
# node (the session's node_agent fixture keeps one registered), which runs pods for real.
ON_KWOK = {"type": "kwok"}


def test_deployment_becomes_ready_and_job_succeeds(k8s_api: Any, namespace: str) -> None:
    apps, batch = client.AppsV1Api(k8s_api), client.BatchV1Api(k8s_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(node_selector=ON_KWOK, containers=[_container("web")]),
                ),
            ),
        ),
    )
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="once"),
            spec=client.V1JobSpec(
                backoff_limit=0,
                template=client.V1PodTemplateSpec(
                    spec=client.V1PodSpec(
                        node_selector=ON_KWOK,
                        restart_policy="Never",
                        containers=[_container("once")],
                    )
                ),
            ),
        ),
    )

    ready = wait_for(
        lambda: (
            (apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas or 0)
            == 2
        ),
        timeout=60,
        what="Deployment web to have 2 ready replicas",
    )
    assert ready
    job = wait_for(
        lambda: (j := batch.read_namespaced_job_status("once", namespace)).status.succeeded and j,
        timeout=60,
        what="Job once to succeed",
    )
    assert job.status.succeeded == 1
    # The ReplicaSet controller really made two pods, each bound to a node by the real scheduler.
    pods = client.CoreV1Api(k8s_api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    assert all(p.spec.node_name for p in pods)


def _job(name: str, labels: dict[str, str] | None = None) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    node_selector=ON_KWOK, restart_policy="Never", containers=[_container(name)]
                ),
            ),
        ),
    )


def test_a_build_pod_runs_until_the_test_finishes_it(k8s_api: Any, namespace: str) -> None:
    """kwok starts a trtops build pod and leaves it Running (hack/kwok/pod-complete.yaml): before,
    it finished it at once without the worker's result, and the operator said ResultMissing
    before a test could write the result. A plain Job started after it still succeeds."""
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(namespace, _job("build", {"trtops.dev/component": "build"}))

    def build_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=build").items
        return next((p for p in pods if p.status.phase == "Running"), None)

    pod = wait_for(build_pod, timeout=60, what="the build pod running")
    batch.create_namespaced_job(namespace, _job("plain"))
    wait_for(
        lambda: batch.read_namespaced_job_status("plain", namespace).status.succeeded,
        timeout=60,
        what="Job plain to succeed",
    )
    # kwok finished the later plain pod, and left the build pod as it started it.
    still = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert still.status.phase == "Running"
    assert not batch.read_namespaced_job_status("build", namespace).status.succeeded


def test_gpu_pod_lands_on_a_node_of_the_requested_product(k8s_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="gpu"),
            spec=client.V1PodSpec(
                node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"},
                containers=[
                    _container(
                        "gpu",
                        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
                    )
                ],
            ),
        ),
    )
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("gpu", namespace)).status.phase == "Running" and p,
        timeout=60,
        what="GPU pod to run",
    )
    assert pod.spec.node_name == "gpu-l4-0"


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    k8s_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="greedy"),
            spec=client.V1PodSpec(
                containers=[
                    _container(
                        "g",
                        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "64"}),
                    )
                ]
            ),
        ),
    )

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("greedy", namespace)
        return any(c.reason == "Unschedulable" for c in pod.status.conditions or [])

    assert wait_for(unschedulable, timeout=60, what="scheduler to report Unschedulable")
    assert core.read_namespaced_pod("greedy", namespace).spec.node_name is None


def test_kubectl_sees_gpu_capacity(kubeconfig: Any) -> None:
    out = kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.allocatable.nvidia\\.com/gpu}")
    assert sorted(out.split()) == ["4", "8", "8"]
