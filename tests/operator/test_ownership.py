"""Ownership before every write, against the real API server and garbage collector: an object
the engine does not control is never applied over, nor deleted, whatever its name."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from tests.operator.test_canary_status import _http_route, _start_canary
from tests.operator.test_cluster import OPERATOR, SUCCESS, Cluster
from tests.operator.test_cluster import cluster as cluster  # the fixture, shared
from tests.operator.test_cluster import pytestmark as pytestmark  # cluster, CRD, claim
from tests.operator.test_stuck_cluster import _row
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
        degraded = cluster.build_and_finish("conv", SUCCESS, ("Degraded", "NameConflict"))
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


def test_a_claim_that_has_not_opted_in_is_named_in_ready_and_mounted_once_labelled(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    """Before: with the claim unlabelled, no Job existed yet Built said "build Job ... created",
    Ready said Building/"no plan serves yet" and Progressing "building": `kubectl get trt -o
    wide` (Ready's reason and message) hid why nothing happened. Now Built, Ready and
    Progressing say ClaimNotAllowed and what to do; labelling the claim starts the build."""
    cluster.core.patch_namespaced_persistent_volume_claim(
        "trt-plans", cluster.ns, {"metadata": {"labels": {"trtops.dev/mountable": None}}}
    )
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv")
        ready = cluster.wait_condition("conv", "Ready", "ClaimNotAllowed")
        assert ready["status"] == "False"
        assert "label it trtops.dev/mountable=true" in ready["message"]
        built = cluster.condition("conv", "Built")
        assert (built["status"], built["reason"]) == ("False", "ClaimNotAllowed")
        assert "created" not in built["message"]
        progressing = cluster.condition("conv", "Progressing")
        assert (progressing["status"], progressing["reason"]) == ("False", "ClaimNotAllowed")
        assert cluster.condition("conv", "Degraded")["status"] == "True"
        assert not cluster.jobs()
        cluster.wait_warning("ClaimNotAllowed")

        cluster.core.patch_namespaced_persistent_volume_claim(
            "trt-plans", cluster.ns, {"metadata": {"labels": {"trtops.dev/mountable": "true"}}}
        )
        wait_for(cluster.jobs, timeout=90, what="a build Job once the claim is labelled")
        cluster.wait_condition("conv", "Built", "Building")
        assert cluster.condition("conv", "Degraded")["status"] == "False"


def test_a_route_that_has_not_opted_in_is_named_in_status(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    """Before: a canary whose HTTPRoute lacked trtops.dev/engine showed Degraded=False and
    Progressing=True at its step's weight while the route never moved (only the log and an
    Event said why). Now Degraded and Progressing say RouterMisconfigured and the annotation to
    add; the route is left as it was. ``kubectl get trt`` shows the weight the route carries
    (WEIGHT 0, not the step's 10) and Ready says the route is unusable."""
    router = _http_route(cluster, opted_in=False)
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        _start_canary(cluster, [{"setWeight": 10, "pauseSeconds": 600}], router)
        # Degraded says RouterMisconfigured from the first revision on (its route was refused
        # too): wait for the canary at its step before reading what the row shows.
        wait_for(
            lambda: (
                (cluster.get("conv")["status"].get("canary") or {}).get("phase") == "Progressing"
            ),
            timeout=120,
            what="the canary at its step",
        )
        degraded = cluster.wait_condition("conv", "Degraded", "RouterMisconfigured")
        assert degraded["status"] == "True"
        assert "annotate it trtops.dev/engine=conv" in degraded["message"]
        progressing = cluster.condition("conv", "Progressing")
        assert (progressing["status"], progressing["reason"]) == ("False", "RouterMisconfigured")
        route = cluster.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", cluster.ns, "httproutes", "conv"
        )
        assert [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]] == ["conv"]
        row = _row(cluster, "conv")
        assert row["WEIGHT"] == "0", row
        assert "at 0%: the route is unusable" in row["MESSAGE"], row
        assert cluster.get("conv")["status"]["canary"]["setWeight"] == 10  # the step's
        # Retried every 30 s without flapping: Degraded never turned False in between.
        time.sleep(35)
        again = cluster.condition("conv", "Degraded")
        assert (again["reason"], again["lastTransitionTime"]) == (
            "RouterMisconfigured",
            degraded["lastTransitionTime"],
        )
