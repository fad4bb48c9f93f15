"""Fixtures for the canary tests.

Istio is not installed in the local cluster, so ``virtualservice_crd`` registers a minimal
``virtualservices.networking.istio.io`` CRD (served version ``v1``) whose ``spec`` is
``x-kubernetes-preserve-unknown-fields``: the API server stores and patches it like the real
one, without Istio's validation. It is created only when absent, so a real Istio CRD is never
replaced, and left installed for later sessions (CRDs are cluster-wide and cheap).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cluster import wait_for

VS_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "virtualservices.networking.istio.io"},
    "spec": {
        "group": "networking.istio.io",
        "scope": "Namespaced",
        "names": {
            "plural": "virtualservices",
            "singular": "virtualservice",
            "kind": "VirtualService",
            "shortNames": ["vs"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="session")
def virtualservice_crd(k8s_api: Any) -> str:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(k8s_api)
    try:
        ext.create_custom_resource_definition(VS_CRD)  # type: ignore[arg-type]  # dicts serialize as is
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(VS_CRD["metadata"]["name"])
        conds = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(established, timeout=30, what="VirtualService CRD established")
    return "networking.istio.io"
