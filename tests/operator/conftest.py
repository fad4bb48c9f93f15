"""Operator test fixtures: the CRD applied once per session, and helpers that act like the
kubelet (kwok starts build pods and leaves them running, hack/kwok/pod-complete.yaml, so tests
write the worker's result)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD = Path(__file__).resolve().parents[2] / "crds" / "trtops.dev_trtengines.yaml"


@pytest.fixture(scope="session")
def trtengine_crd(k8s_api: Any) -> str:
    """Apply the CRD (create or replace) and wait until it is Established."""
    from kubernetes import client

    from tests.support.cluster import wait_for

    ext = client.ApiextensionsV1Api(k8s_api)
    body = yaml.safe_load(CRD.read_text())
    name = body["metadata"]["name"]
    try:
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        ext.create_custom_resource_definition(body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for(established, timeout=30, what="CRD established")
    return name


def finish_build_pod(
    k8s_api: Any, namespace: str, pod: str, result: dict[str, Any], exit_code: int | None = None
) -> None:
    """Write what the kubelet would: the build container terminated with ``result`` as its
    termination message (exit code ``exit_code``, by default 0 when ``result["ok"]``, else 1)."""
    from kubernetes import client

    ok = bool(result.get("ok"))
    terminated = {
        "exitCode": (0 if ok else 1) if exit_code is None else exit_code,
        "reason": "Completed" if ok else "Error",
        "message": json.dumps(result),
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:01:00Z",
    }
    patch = {
        "status": {
            "phase": "Succeeded" if ok else "Failed",
            "containerStatuses": [
                {
                    "name": "build",
                    "image": "worker",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
    }
    client.CoreV1Api(k8s_api).patch_namespaced_pod_status(
        pod, namespace, patch, _content_type="application/strategic-merge-patch+json"
    )


@pytest.fixture(scope="session", autouse=True)
def _short_watches() -> None:
    """kopf closes a watch only when its server timeout ends: keep operator shutdowns quick."""
    import os

    os.environ["TRTOPS_WATCH_TIMEOUT_SECONDS"] = "5"


@pytest.fixture
def plans_claim(k8s_api: Any, namespace: str) -> Iterator[str]:
    """A bound ``trt-plans`` claim (a hostPath PV pre-bound to it): pods with the claim schedule."""
    from kubernetes import client

    from tests.support.cluster import wait_for

    core = client.CoreV1Api(k8s_api)
    pv_name = f"pv-{namespace}"[:63]
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"trtops.dev/test": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/{pv_name}"},
                "claimRef": {"namespace": namespace, "name": "trt-plans"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            # The claim's consent to be mounted by TrtEngine pods.
            "metadata": {"name": "trt-plans", "labels": {"trtops.dev/mountable": "true"}},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: (
            core.read_namespaced_persistent_volume_claim("trt-plans", namespace).status.phase
            == "Bound"
        ),
        timeout=60,
        what="claim trt-plans bound",
    )
    yield "trt-plans"
    with contextlib.suppress(client.ApiException):  # already gone
        core.delete_persistent_volume(pv_name)
