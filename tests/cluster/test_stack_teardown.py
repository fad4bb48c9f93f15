"""The local stack (``make demo``'s) leaves no namespace behind on a cluster kept up for the next
run (TRTOPS_KEEP_CLUSTER=1), even when its TrtEngine still carries the operator's finalizer."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.operator.test_crd_validation import VALID
from tests.support.cluster import kubectl
from tests.support.node_agent_process import NodeAgentHandle
from tests.support.stack import _delete_namespace


@pytest.mark.cluster
@pytest.mark.usefixtures("trtengine_crd")
def test_the_namespace_goes_even_with_an_engine_the_stopped_operator_finalized(
    k8s_api: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    namespace = f"teardown-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    body = {**VALID, "metadata": {"name": "conv", "finalizers": ["trtops.dev/route-cleanup"]}}
    client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        "trtops.dev", "v1alpha1", namespace, "trtengines", body
    )
    gone = subprocess.Popen(["true"])  # the stack's node agent, already stopped
    gone.wait()
    _delete_namespace(namespace, "plans", NodeAgentHandle("none", tmp_path, gone), lambda _: None)
    deadline = time.monotonic() + 60
    while kubectl("get", "namespace", namespace, "-o", "name", check=False).strip():
        assert time.monotonic() < deadline, kubectl("get", "namespace", namespace, "-o", "yaml")
        time.sleep(0.5)
