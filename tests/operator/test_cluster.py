"""The operator against the real API server, controllers and garbage collector (kwok nodes).

kwok starts build pods and leaves them running (hack/kwok/pod-complete.yaml: it would finish them
without a termination message), so where a build "finishes" the test writes the worker's result
into the pod status itself, as the kubelet would (``finish_build_pod``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.operator.conftest import finish_build_pod
from tests.support.cluster import kubectl, started_pod, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd", "plans_claim")]

OPERATOR = "trtops_operator.handlers"
H100 = "NVIDIA-H100-80GB-HBM3"
ENGINE: dict[str, Any] = {
    "apiVersion": "trtops.dev/v1alpha1",
    "kind": "TrtEngine",
    "metadata": {"name": "conv"},
    "spec": {
        "model": {"uri": "models/conv.onnx"},
        "build": {"precision": "fp16", "targets": [{"gpuProduct": H100}], "backoffLimit": 0},
        "storage": {"claimName": "trt-plans"},
        "serving": {"replicas": 2},
    },
}
SUCCESS = {
    "ok": True,
    "key": "f" * 64,
    "path": "/plans/" + "f" * 64,
    "artifact": "engine.plan",
    "sha256": "e" * 64,
    "precision": "fp16",
    "backend": "tensorrt",
    "versions": {"tensorrt": "11.4.0"},
    "device": {"gpuProduct": H100, "computeCapability": "9.0"},
    "cached": False,
    "buildSeconds": 42.5,
    "accuracy": {"top1Agreement": 1.0},
    "benchmark": {"p99Ms": 1.2},
}


class Cluster:
    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def create(self, name: str, spec_patch: Callable[[dict[str, Any]], None] | None = None) -> None:
        body = copy.deepcopy(ENGINE)
        body["metadata"]["name"] = name
        if spec_patch:
            spec_patch(body["spec"])
        self.custom.create_namespaced_custom_object(
            "trtops.dev", "v1alpha1", self.ns, "trtengines", body
        )

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "trtops.dev", "v1alpha1", self.ns, "trtengines", name
        )
        return obj

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for c in self.get(name).get("status", {}).get("conditions", []):
            if c["type"] == type_:
                return dict(c)
        return {}

    def jobs(self) -> list[Any]:
        return list(
            self.batch.list_namespaced_job(
                self.ns, label_selector="app.kubernetes.io/managed-by=trtops"
            ).items
        )

    def build_pod(self, job: str) -> str:
        """Job ``job``'s pod once a test may finish it (``started_pod``)."""
        return started_pod(self.core, self.ns, f"job-name={job}")

    def finish_build(
        self, result: dict[str, Any], *, after: Collection[str] = ()
    ) -> tuple[Any, dict[str, Any]]:
        """Wait for a build Job not named in ``after`` and finish its pod as the kubelet would,
        with the worker's ``result`` (a success under the Job's own plan key, as the worker
        writes it); return the Job and the result written."""
        job = wait_for(
            lambda: [j for j in self.jobs() if j.metadata.name not in after],
            timeout=60,
            what="a new build Job",
        )[0]
        if result.get("ok"):
            key = job.metadata.annotations["trtops.dev/key"]
            result = {**result, "key": key, "path": f"/plans/{key}"}
        finish_build_pod(self.api, self.ns, self.build_pod(job.metadata.name), result)
        return job, result

    def build_and_finish(
        self,
        name: str,
        result: dict[str, Any],
        until: tuple[str, str],
        spec_patch: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Create engine ``name``, finish its build with ``result`` and return its condition
        ``until`` = (type, reason) once it says so."""
        self.create(name, spec_patch)
        self.finish_build(result)
        return self.wait_condition(name, *until)

    def wait_condition(self, name: str, type_: str, reason: str) -> dict[str, Any]:
        """The condition ``type_`` once its reason is ``reason``."""

        def probe() -> dict[str, Any] | None:
            c = self.condition(name, type_)
            return c if c.get("reason") == reason else None

        return wait_for(probe, timeout=90, what=f"{type_} with reason {reason}")

    def wait_warning(self, reason: str) -> None:
        def probe() -> bool:
            events = self.core.list_namespaced_event(self.ns).items
            return any(e.reason == reason and e.type == "Warning" for e in events)

        wait_for(probe, timeout=30, what=f"a Warning event {reason}")

    def deployments(self, engine: str) -> list[Any]:
        return list(
            self.apps.list_namespaced_deployment(
                self.ns, label_selector=f"trtops.dev/engine={engine}"
            ).items
        )


@pytest.fixture
def cluster(k8s_api: Any, namespace: str) -> Cluster:
    return Cluster(k8s_api, namespace)


def test_build_serve_share_and_garbage_collect(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv")
        job, result = cluster.finish_build(SUCCESS)
        pod_spec = job.spec.template.spec
        assert pod_spec.node_selector == {"nvidia.com/gpu.product": H100}
        assert pod_spec.containers[0].resources.limits == {"nvidia.com/gpu": "1", "memory": "16Gi"}
        assert pod_spec.automount_service_account_token is False
        cluster.wait_condition("conv", "Ready", "Serving")
        status = cluster.get("conv")["status"]
        assert status["plans"][0]["sha256"] == "e" * 64
        assert status["plans"][0]["path"] == result["path"]
        assert status["stable"]["weight"] == 100
        assert status["stable"]["revision"] == status["revision"]
        (dep,) = cluster.deployments("conv")
        assert dep.status.ready_replicas == 2
        args = dep.spec.template.spec.containers[0].args
        assert args[args.index("--artifact-dir") + 1] == result["path"]
        assert cluster.core.read_namespaced_service("conv", cluster.ns).spec.ports[0].port == 8000
        from kubernetes import client

        client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget("conv", cluster.ns)
        policy = client.NetworkingV1Api(cluster.api).read_namespaced_network_policy(
            "conv", cluster.ns
        )
        assert policy.spec.pod_selector.match_labels["trtops.dev/engine"] == "conv"

        # An identical spec under another name reuses the plan: no second Job.
        cluster.create("conv-twin")
        wait_for(
            lambda: cluster.condition("conv-twin", "Ready").get("status") == "True",
            timeout=90,
            what="twin Ready",
        )
        assert len(cluster.jobs()) == 1
        assert cluster.get("conv-twin")["status"]["plans"][0]["sha256"] == "e" * 64

        # Deleting a resource lets the garbage collector remove what it owned.
        cluster.custom.delete_namespaced_custom_object(
            "trtops.dev", "v1alpha1", cluster.ns, "trtengines", "conv"
        )
        wait_for(
            lambda: not cluster.deployments("conv"), timeout=90, what="conv's Deployment collected"
        )
        cluster.custom.delete_namespaced_custom_object(
            "trtops.dev", "v1alpha1", cluster.ns, "trtengines", "conv-twin"
        )
        wait_for(
            lambda: not cluster.deployments("conv-twin"),
            timeout=90,
            what="twin's Deployment collected",
        )
        wait_for(
            lambda: not cluster.jobs(),
            timeout=90,
            what="the shared Job collected after its last owner",
        )


def test_restart_mid_build_makes_no_second_job(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv")
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0]
    # The operator is gone; the build finishes meanwhile.
    finish_build_pod(cluster.api, cluster.ns, cluster.build_pod(job.metadata.name), SUCCESS)
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        wait_for(
            lambda: cluster.condition("conv", "Built").get("status") == "True",
            timeout=90,
            what="Built",
        )
        wait_for(
            lambda: cluster.condition("conv", "Ready").get("status") == "True",
            timeout=90,
            what="Ready",
        )
    assert [j.metadata.name for j in cluster.jobs()] == [job.metadata.name]


ACCURACY_REFUSAL = {
    "ok": False,
    "category": "accuracy",
    "reason": "AccuracyGateFailed",
    "message": "top-1 agreement 0.91 is below 0.99",
}


def test_worker_failure_reaches_status_and_events(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    failure = ACCURACY_REFUSAL
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        built = cluster.build_and_finish("conv", failure, ("Built", "AccuracyGateFailed"))
        assert built["status"] == "False"
        assert "0.91" in built["message"]
        assert cluster.condition("conv", "Ready")["status"] == "False"
        assert cluster.condition("conv", "Degraded")["status"] == "True"
        assert not cluster.deployments("conv")
        cluster.wait_warning("AccuracyGateFailed")


def test_a_refused_deployment_reaches_status_and_events(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    """A cluster policy (a real ValidatingAdmissionPolicy, enforced by the API server) refuses
    the serving Deployment: the user must read why in status and Events, not in operator logs."""
    policy = f"no-deployments-{cluster.ns}"
    manifest = f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  validations:
  - expression: "false"
    message: deployments are frozen in this namespace
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {cluster.ns}}}
"""
    kubectl("apply", "-f", "-", input_text=manifest)
    probe = (
        '{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe"}, "spec": '
        '{"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},'
        ' "spec": {"containers": [{"name": "c", "image": "i"}]}}}}'
    )

    def enforced() -> bool:
        # The API server loads new policies asynchronously; dry-run until it refuses.
        out = kubectl(
            "create", "--dry-run=server", "-n", cluster.ns, "-f", "-", input_text=probe, check=False
        )
        return "probe" not in out

    wait_for(enforced, timeout=60, what="the admission policy to be enforced")
    try:
        with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
            degraded = cluster.build_and_finish("conv", SUCCESS, ("Degraded", "ApplyRefused"))
            assert degraded["status"] == "True"
            assert "deployments are frozen in this namespace" in degraded["message"]
            assert cluster.get("conv")["status"]["plans"][0]["sha256"] == SUCCESS["sha256"]
            assert not cluster.deployments("conv")
            cluster.wait_warning("ApplyRefused")
    finally:
        kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            policy,
            "--ignore-not-found",
            check=False,
        )


def test_a_tainted_gpu_pool_is_reached_through_tolerations(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    """The real scheduler keeps pods off a tainted pool unless they tolerate its taint; adding
    serving tolerations later rolls the serving pods onto it without a rebuild."""
    suffix = cluster.ns[-6:]
    node, product = f"tainted-{suffix}", f"TEST-TAINTED-{suffix}"  # this test's own GPU pool
    taint = {"key": "trtops.dev/pool", "value": suffix, "effect": "NoSchedule"}
    manifest = f"""
apiVersion: v1
kind: Node
metadata:
  name: {node}
  annotations: {{kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}}
  labels: {{kubernetes.io/hostname: {node}, type: kwok, nvidia.com/gpu.product: {product}}}
spec:
  taints: [{{key: "{taint["key"]}", value: "{suffix}", effect: NoSchedule}}]
status:
  allocatable: &res {{cpu: "32", memory: 256Gi, pods: "110", nvidia.com/gpu: "8"}}
  capacity: *res
"""
    kubectl("apply", "-f", "-", input_text=manifest)

    def pods(selector: str) -> list[Any]:
        return list(cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items)

    def untolerated(selector: str) -> bool:
        """A pod of ``selector`` is unschedulable, and a taint is why (only the pool matches)."""
        return any(
            c.type == "PodScheduled"
            and c.reason == "Unschedulable"
            and "untolerated taint" in (c.message or "")
            for p in pods(selector)
            for c in p.status.conditions or []
        )

    def all_on_the_pool(selector: str) -> bool:
        found = [p for p in pods(selector) if p.metadata.deletion_timestamp is None]
        return bool(found) and all(p.spec.node_name == node for p in found)

    def with_tolerations(spec: dict[str, Any]) -> None:
        spec["build"]["targets"] = [{"gpuProduct": product}]
        spec["build"]["tolerations"] = [taint]
        spec["serving"]["replicas"] = 1

    try:
        with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
            cluster.create("conv", with_tolerations)
            job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0].metadata.name
            wait_for(lambda: all_on_the_pool(f"job-name={job}"), what="build pod on the pool")
            result = {**SUCCESS, "device": {"gpuProduct": product, "computeCapability": "9.0"}}
            finish_build_pod(cluster.api, cluster.ns, cluster.build_pod(job), result)

            # Serving does not tolerate the taint yet: its pods cannot be placed.
            serve = "trtops.dev/engine=conv,trtops.dev/component=serve"
            wait_for(lambda: untolerated(serve), timeout=90, what="a serve pod kept off the pool")
            assert cluster.condition("conv", "Ready").get("status") != "True"
            revision = cluster.get("conv")["status"]["revision"]
            (before,) = cluster.deployments("conv")

            cluster.custom.patch_namespaced_custom_object(
                "trtops.dev",
                "v1alpha1",
                cluster.ns,
                "trtengines",
                "conv",
                {"spec": {"serving": {"tolerations": [taint]}}},
            )
            wait_for(
                lambda: cluster.condition("conv", "Ready").get("status") == "True",
                timeout=90,
                what="conv Ready once serving tolerates the taint",
            )
            (after,) = cluster.deployments("conv")
            assert after.metadata.name == before.metadata.name  # rolled in place
            assert cluster.get("conv")["status"]["revision"] == revision
            assert [j.metadata.name for j in cluster.jobs()] == [job]  # no rebuild
            wait_for(lambda: all_on_the_pool(serve), what="serve pods only on the pool")
    finally:
        # Pods bound to the node go first (nothing else would remove them), then the node.
        cluster.core.delete_collection_namespaced_pod(cluster.ns, grace_period_seconds=0)
        kubectl("delete", "node", node, "--ignore-not-found", check=False)
