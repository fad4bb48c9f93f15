"""Ownership before every write, against the real API server and garbage collector: an object
the engine does not control is never applied over, nor deleted, whatever its name."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from tests.operator.conftest import finish_build_pod
from tests.operator.test_cluster import OPERATOR, SUCCESS, Cluster
from tests.operator.test_cluster import cluster as cluster  # the fixture, shared
from tests.operator.test_cluster import pytestmark as pytestmark  # cluster, CRD, claim
from tests.support.cluster import wait_for


def test_a_service_of_the_same_name_is_not_taken_over_nor_collected(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    """A TrtEngine named like an existing Service: before, the Service's selector was replaced,
    the engine became its controller, and deleting the engine garbage-collected it within a
    second. Now the Service is left untouched, the engine says NameConflict naming it, and
    deleting the engine leaves the Service."""
    from kubernetes import client

    cluster.core.create_namespaced_service(
        cluster.ns,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="conv", labels={"team": "web"}),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(name="web", port=80)]
            ),
        ),
    )
    before = cluster.core.read_namespaced_service("conv", cluster.ns)
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv")
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0]
        finish_build_pod(cluster.api, cluster.ns, cluster.build_pod(job.metadata.name), SUCCESS)
        degraded = cluster.wait_condition("conv", "Degraded", "NameConflict")
        assert degraded["status"] == "True"
        assert f"Service {cluster.ns}/conv already exists" in degraded["message"]
        cluster.wait_warning("NameConflict")
        after = cluster.core.read_namespaced_service("conv", cluster.ns)
        assert after.metadata.resource_version == before.metadata.resource_version
        assert after.spec.selector == {"app": "web"}
        assert not after.metadata.owner_references

        cluster.custom.delete_namespaced_custom_object(
            "trtops.dev", "v1alpha1", cluster.ns, "trtengines", "conv"
        )
        wait_for(
            lambda: not cluster.deployments("conv"), timeout=90, what="conv's Deployment collected"
        )
    time.sleep(2)  # the collector removed what the engine owned; the Service was never that
    kept = cluster.core.read_namespaced_service("conv", cluster.ns)
    assert kept.metadata.uid == before.metadata.uid
    assert kept.spec.selector == {"app": "web"}
