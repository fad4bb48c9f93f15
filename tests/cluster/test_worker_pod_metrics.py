"""A real worker pod end to end, without the operator: the node agent runs ``trtops-worker serve``
for a Deployment pod, the pod turns Ready through ``/v2/health/ready``, it answers an OIP v2
inference on its pod IP, and a real Prometheus finds it through its pod annotations
and scrapes its latency histogram."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client
from trtops_worker import samples

from tests.support.cluster import wait_for
from tests.support.node_agent_process import NodeAgentHandle

pytestmark = pytest.mark.cluster


def test_worker_pod_serves_and_is_scraped(
    k8s_api: Any,
    namespace: str,
    node_agent: NodeAgentHandle,
    kubeconfig: Path,
    prometheus: Callable[..., Any],
) -> None:
    claim = node_agent.create_claim(namespace, "plans")
    samples.save(samples.conv_classifier(), claim / "models" / "conv.onnx")
    worker = shutil.which("trtops-worker")
    assert worker, "trtops-worker must be installed (pip install -e .)"
    labels = {"app": "conv"}
    container = client.V1Container(
        name="serve",
        image="trtops-worker",
        command=[worker, "serve"],
        args=[
            "--model",
            "/plans/models/conv.onnx",
            "--backend",
            "onnxruntime",
            "--model-name",
            "conv",
            "--revision",
            "r1",
            "--precision",
            "fp32",
            "--http-port",
            "8000",
            "--grpc-port",
            "8001",
            "--metrics-port",
            "8002",
        ],
        volume_mounts=[client.V1VolumeMount(name="plans", mount_path="/plans", read_only=True)],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/v2/health/ready", port=8000), period_seconds=1
        ),
    )
    client.AppsV1Api(k8s_api).create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="conv"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(
                        labels=labels,
                        annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "8002"},
                    ),
                    spec=client.V1PodSpec(
                        node_selector=node_agent.node_selector,
                        containers=[container],
                        volumes=[
                            client.V1Volume(
                                name="plans",
                                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                                    claim_name="plans", read_only=True
                                ),
                            )
                        ],
                    ),
                ),
            ),
        ),
    )
    apps = client.AppsV1Api(k8s_api)
    wait_for(
        lambda: (
            apps.read_namespaced_deployment_status("conv", namespace).status.ready_replicas == 1
        ),
        timeout=90,
        what="the worker pod to become Ready",
    )
    pod = (
        client.CoreV1Api(k8s_api).list_namespaced_pod(namespace, label_selector="app=conv").items[0]
    )

    x = samples.calibration_inputs(samples.conv_classifier(), 1)["input"]
    body = json.dumps(
        {
            "id": "r-1",
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ],
        }
    ).encode()
    for _ in range(20):
        req = urllib.request.Request(
            f"http://{pod.status.pod_ip}:8000/v2/models/conv/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the pod's loopback IP
            answer = json.load(resp)
    assert answer["id"] == "r-1"
    assert np.asarray(answer["outputs"][0]["data"]).shape == (10,)

    prom = prometheus({}, discover_pods=True)
    result = wait_for(
        lambda: prom.query(
            "sum by (namespace, pod, revision) "
            f'(trtops_requests_total{{namespace="{namespace}", outcome="success"}})'
        ),
        timeout=60,
        what="Prometheus to discover and scrape the worker pod",
    )
    assert result[0]["metric"]["pod"] == pod.metadata.name
    assert result[0]["metric"]["revision"] == "r1"
    assert float(result[0]["value"][1]) >= 20
