"""The HorizontalPodAutoscaler and the replica-less Deployment the operator applies with
``spec.serving.autoscaling`` are accepted by the real API server (server-side dry run), and the
API server refuses autoscaling with the replicas router."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from trtops_operator.config import OperatorConfig
from trtops_operator.manifests import Engine, PlanRef, render_deployment, render_hpa
from trtops_operator.models import TrtEngineSpec

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {
    "model": {"uri": "m.onnx"},
    "build": {"precision": "fp32"},
    "serving": {
        "backend": "onnxruntime",
        "autoscaling": {"minReplicas": 2, "maxReplicas": 8, "metric": "queue"},
    },
    "storage": {"claimName": "plans"},
    "rollout": {"trafficRouter": {"gatewayAPI": {"httpRoute": "r"}}},
}


def kubectl(*args: str, body: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hpa_and_deployment_are_accepted(namespace: str) -> None:
    engine = Engine("e", namespace, "u1", TrtEngineSpec.model_validate(SPEC))
    plan = PlanRef(None, "k" * 64, "/plans/p", "fp32", "onnxruntime")
    config = OperatorConfig(worker_image="w:1")
    deployment = render_deployment(engine, plan, name="e-r1-cpu", revision="r1", config=config)
    hpa = render_hpa(engine, name="e-r1-cpu", revision="r1", floor=20)
    assert "replicas" not in deployment["spec"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (8, 8)
    for obj in (deployment, hpa):
        obj["metadata"].pop("ownerReferences")  # no engine exists to own them in a dry run
        proc = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", body=obj)
        assert proc.returncode == 0, proc.stderr
        created = json.loads(proc.stdout)
        if obj["kind"] == "HorizontalPodAutoscaler":
            metric = created["spec"]["metrics"][0]["pods"]
            assert metric["metric"]["name"] == "trtops_queue_depth"
            assert metric["target"]["averageValue"] == "4"


@pytest.mark.usefixtures("trtengine_crd")
def test_api_server_refuses_autoscaling_with_the_replicas_router(namespace: str) -> None:
    body = {
        "apiVersion": "trtops.dev/v1alpha1",
        "kind": "TrtEngine",
        "metadata": {"name": "e", "namespace": namespace},
        "spec": {**SPEC, "rollout": {"trafficRouter": {"replicas": {}}}},
    }
    proc = kubectl("create", "--dry-run=server", "-f", "-", body=body)
    assert proc.returncode != 0
    assert "needs a weighted traffic router" in proc.stderr
    body["spec"] = SPEC
    proc = kubectl("create", "--dry-run=server", "-f", "-", body=body)
    assert proc.returncode == 0, proc.stderr
