"""kopf, run in-process by KopfRunner, reacts to a real object on the local API server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.support.cluster import wait_for

pytestmark = pytest.mark.cluster


def test_kopf_handler_runs_against_the_local_cluster(
    k8s_api: Any, namespace: str, kopf_operator: Callable[..., Any]
) -> None:
    core = client.CoreV1Api(k8s_api)
    with kopf_operator("tests.cluster.kopf_sample_handlers", namespaces=[namespace]) as runner:
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="hello", labels={"trtops.dev/echo": "yes"}),
                data={"say": "hello"},
            ),
        )
        annotations = wait_for(
            lambda: core.read_namespaced_config_map("hello", namespace).metadata.annotations,
            timeout=30,
            what="the handler's annotation",
        )
        # An unlabelled ConfigMap must be left alone.
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="other"), data={"say": "x"}),
        )
    assert annotations["trtops.dev/echoed"] == "HELLO"
    other = core.read_namespaced_config_map("other", namespace)
    assert not other.metadata.annotations
    assert "Handler 'echo' succeeded" in runner.output
