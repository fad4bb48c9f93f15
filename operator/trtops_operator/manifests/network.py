"""How the serving pods are reached: the Services (of every revision, or of one for a weighted
router) and the NetworkPolicy that says who may connect."""

from __future__ import annotations

from typing import Any

from trtops_operator.manifests.common import (
    CLIENT_LABEL,
    GRPC_PORT,
    HTTP_PORT,
    MANAGED_BY,
    METRICS_PORT,
    Engine,
    owner_reference,
    serving_selector,
    stamp,
)


def render_service(
    engine: Engine, *, revision: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A Service in front of the engine's serving pods: of every revision (``revision=None``:
    plain rollouts and the replica-ratio router, where pod counts are the traffic split) or of
    one revision (the stable ``<engine>`` and ``<engine>-canary`` Services that a Gateway API
    or Istio router weighs against each other)."""
    selector = serving_selector(engine)
    if revision is not None:
        selector = {**selector, "trtops.dev/revision": revision}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name or engine.name,
            "namespace": engine.namespace,
            "labels": {**MANAGED_BY, "trtops.dev/engine": engine.name},
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }
    return stamp(service)


def render_network_policy(engine: Engine) -> dict[str, Any]:
    """Who may connect to the engine's serving pods: inference (http, grpc) from pods of its
    namespace labelled ``trtops.dev/client`` with the engine's name (or ``"true"``: any engine)
    and from namespaces labelled ``trtops.dev/gateway: "true"`` (a Gateway, a mesh ingress);
    the metrics port from namespaces labelled ``trtops.dev/monitoring: "true"``; with
    ``rollout.analysis.shadow``, inference from the engine's own serving pods too. Once a policy
    selects the pods, every other connection is refused (where the CNI enforces policies)."""
    inference = [
        {
            "podSelector": {
                "matchExpressions": [
                    {"key": CLIENT_LABEL, "operator": "In", "values": [engine.name, "true"]}
                ]
            }
        },
        {"namespaceSelector": {"matchLabels": {"trtops.dev/gateway": "true"}}},
    ]
    analysis = engine.spec.rollout.analysis if engine.spec.rollout else None
    if (analysis is not None and analysis.shadow is not None) or engine.spec.experiment:
        # stable pods send shadow requests to the canary's or the variants' (serve/shadow.py)
        inference.append({"podSelector": {"matchLabels": serving_selector(engine)}})
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": engine.name,
            "namespace": engine.namespace,
            "labels": {**MANAGED_BY, "trtops.dev/engine": engine.name},
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "podSelector": {"matchLabels": serving_selector(engine)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": inference,
                    "ports": [
                        {"port": HTTP_PORT, "protocol": "TCP"},
                        {"port": GRPC_PORT, "protocol": "TCP"},
                    ],
                },
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"trtops.dev/monitoring": "true"}}}
                    ],
                    "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
                },
            ],
        },
    }
    return stamp(policy)
