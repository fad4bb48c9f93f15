"""The local gateway (test support) really follows an HTTPRoute's weights over real pods: the
tests that check canary traffic depend on it."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from kubernetes import client

from tests.support.cluster import kubectl, wait_for
from tests.support.gateway import start_gateway, stats
from tests.support.node_agent_process import NodeAgentHandle

pytestmark = pytest.mark.cluster


def _site(k8s_api: Any, namespace: str, agent: NodeAgentHandle, name: str) -> None:
    root = agent.create_claim(namespace, name)
    (root / "who").write_text(name)
    labels = {"app": name}
    client.AppsV1Api(k8s_api).create_namespaced_deployment(
        namespace, agent.static_site(name, claim=name, ready_path="/who")
    )
    client.CoreV1Api(k8s_api).create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1ServiceSpec(
                selector=labels,
                ports=[client.V1ServicePort(name="http", port=80, target_port=8080)],
            ),
        ),
    )


def test_gateway_splits_traffic_by_httproute_weights(
    k8s_api: Any, namespace: str, node_agent: NodeAgentHandle, tmp_path: Any
) -> None:
    _site(k8s_api, namespace, node_agent, "blue")
    _site(k8s_api, namespace, node_agent, "green")
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text="""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: site}
spec:
  rules:
    - backendRefs:
        - {name: blue, port: 80, weight: 75}
        - {name: green, port: 80, weight: 25}
""",
    )
    with start_gateway(httproute=f"{namespace}/site", log_dir=tmp_path) as url:
        wait_for(
            lambda: (
                all(eps for _, _, eps in stats(url)["backends"])
                and len(stats(url)["backends"]) == 2
            ),
            timeout=60,
            what="both backends to have ready endpoints",
        )
        seen = {"blue": 0, "green": 0}
        for _ in range(400):
            with urllib.request.urlopen(f"{url}/who", timeout=10) as resp:  # noqa: S310 - loopback
                seen[resp.read().decode()] += 1
        # 75/25 of 400: a binomial with sd ~8.7; 5 sd either way.
        assert 256 <= seen["blue"] <= 344, seen
        assert stats(url)["requests"] == seen

        kubectl(
            "patch",
            "httproute",
            "site",
            "-n",
            namespace,
            "--type=json",
            "-p",
            '[{"op":"replace","path":"/spec/rules/0/backendRefs/1/weight","value":0}]',
        )
        wait_for(
            lambda: dict((s, w) for s, w, _ in stats(url)["backends"])["green"] == 0,
            timeout=10,
            what="the gateway to see the new weights",
        )
        for _ in range(50):
            with urllib.request.urlopen(f"{url}/who", timeout=10) as resp:  # noqa: S310 - loopback
                assert resp.read() == b"blue"
