"""Traffic routers against the real local API server: HTTPRoute (Gateway API standard CRDs, as
``hack/cluster.sh up`` installs them) and VirtualService (minimal CRD, see conftest)."""

from __future__ import annotations

from typing import Any

import pytest
from trtops_operator.canary.errors import RouterMisconfigured
from trtops_operator.canary.routers import httproute_weights, virtualservice_weights
from trtops_operator.k8s import HTTPROUTE, ROUTE_OPT_IN, VIRTUALSERVICE, RouteRef, RouterIO

pytestmark = pytest.mark.cluster

OWNED = {"resnet-r1", "resnet-r2"}
CANARY_10 = {"resnet-r1": 90, "resnet-r2": 10}
OPT_IN = {ROUTE_OPT_IN: "other,resnet"}


def custom(k8s_api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(k8s_api)


def create_route(k8s_api: Any, ns: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    body = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "resnet", "namespace": ns, "annotations": OPT_IN},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": rules},
    }
    obj: dict[str, Any] = custom(k8s_api).create_namespaced_custom_object(
        HTTPROUTE.group, HTTPROUTE.version, ns, HTTPROUTE.plural, body
    )
    return obj


def read(k8s_api: Any, ref: RouteRef, ns: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(k8s_api).get_namespaced_custom_object(
        ref.group, ref.version, ns, ref.plural, "resnet"
    )
    return obj


def foreign_edit(k8s_api: Any, ref: RouteRef, ns: str, patch: list[dict[str, Any]]) -> None:
    """Another writer (Argo CD, a person) changes the object."""
    custom(k8s_api).patch_namespaced_custom_object(
        ref.group,
        ref.version,
        ns,
        ref.plural,
        "resnet",
        patch,
        _content_type="application/json-patch+json",
    )


HEADER_FILTER = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "x-team", "value": "vision"}]},
}


def test_weights_change_and_foreign_refs_and_filters_survive(k8s_api: Any, namespace: str) -> None:
    create_route(
        k8s_api,
        namespace,
        [
            {"backendRefs": [{"name": "resnet-r1", "port": 8000}]},
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/debug"}}],
                "backendRefs": [{"name": "debug", "port": 80}],
            },
        ],
    )
    # Someone else adds a filter and a foreign backend to our rule (weights 100 vs 100).
    foreign_edit(
        k8s_api,
        HTTPROUTE,
        namespace,
        [
            {"op": "add", "path": "/spec/rules/0/filters", "value": [HEADER_FILTER]},
            {"op": "add", "path": "/spec/rules/0/backendRefs/0/weight", "value": 100},
            {
                "op": "add",
                "path": "/spec/rules/0/backendRefs/-",
                "value": {"name": "legacy", "port": 9000, "weight": 100},
            },
        ],
    )
    io = RouterIO(k8s_api)
    assert io.set_httproute_weights(namespace, "resnet", CANARY_10, OWNED, engine="resnet")
    after = read(k8s_api, HTTPROUTE, namespace)
    rule = after["spec"]["rules"][0]
    assert rule["filters"] == [HEADER_FILTER]
    assert {"name": "legacy", "port": 9000, "weight": 100, "group": "", "kind": "Service"} in rule[
        "backendRefs"
    ]
    assert httproute_weights(after, OWNED) == [{"resnet-r1": 90, "resnet-r2": 10}]
    assert after["spec"]["rules"][1]["backendRefs"][0]["name"] == "debug"
    # Same weights again: nothing is written (no resourceVersion churn for Argo CD to see).
    assert not io.set_httproute_weights(namespace, "resnet", CANARY_10, OWNED, engine="resnet")
    assert (
        read(k8s_api, HTTPROUTE, namespace)["metadata"]["resourceVersion"]
        == after["metadata"]["resourceVersion"]
    )


class RacingIO(RouterIO):
    """Lets another writer edit the route right after our first read, before our patch."""

    def __init__(self, k8s_api: Any, ref: RouteRef, ns: str, patch: list[dict[str, Any]]) -> None:
        super().__init__(k8s_api)
        self.k8s_api, self.ref, self.ns, self.patch, self.reads = k8s_api, ref, ns, patch, 0

    def get(self, ref: RouteRef, namespace: str, name: str) -> dict[str, Any]:
        obj = super().get(ref, namespace, name)
        self.reads += 1
        if self.reads == 1:
            foreign_edit(self.k8s_api, self.ref, self.ns, self.patch)
        return obj


def test_concurrent_edit_between_read_and_write_is_not_lost(k8s_api: Any, namespace: str) -> None:
    create_route(k8s_api, namespace, [{"backendRefs": [{"name": "resnet-r1", "port": 8000}]}])
    # The racing writer inserts a foreign backend at index 0: a stale index-based patch would
    # now set the weight of the wrong backendRef.
    race = [
        {
            "op": "add",
            "path": "/spec/rules/0/backendRefs/0",
            "value": {"name": "mirror-target", "port": 81, "weight": 0},
        }
    ]
    io = RacingIO(k8s_api, HTTPROUTE, namespace, race)
    assert io.set_httproute_weights(namespace, "resnet", CANARY_10, OWNED, engine="resnet")
    assert io.reads == 2  # the guarded patch was refused once, then recomputed
    refs = read(k8s_api, HTTPROUTE, namespace)["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r.get("weight")) for r in refs] == [
        ("mirror-target", 0),
        ("resnet-r1", 90),
        ("resnet-r2", 10),
    ]


def test_a_route_that_did_not_opt_in_is_left_alone(k8s_api: Any, namespace: str) -> None:
    """Naming a route in a spec is not enough: the route must name the engine in its
    annotation. Before, any engine could move the weights of any route in its namespace."""
    before = create_route(
        k8s_api, namespace, [{"backendRefs": [{"name": "resnet-r1", "port": 8000}]}]
    )
    custom(k8s_api).patch_namespaced_custom_object(
        HTTPROUTE.group,
        HTTPROUTE.version,
        namespace,
        HTTPROUTE.plural,
        "resnet",
        {"metadata": {"annotations": {ROUTE_OPT_IN: "someone-else"}}},
    )
    for engine in ("resnet", "intruder"):
        with pytest.raises(RouterMisconfigured, match=f"{ROUTE_OPT_IN}={engine}"):
            RouterIO(k8s_api).set_httproute_weights(
                namespace, "resnet", CANARY_10, OWNED, engine=engine
            )
    after = read(k8s_api, HTTPROUTE, namespace)
    assert after["spec"] == before["spec"]


def test_missing_route_is_a_user_error(k8s_api: Any, namespace: str) -> None:
    with pytest.raises(RouterMisconfigured, match="does not exist"):
        RouterIO(k8s_api).set_httproute_weights(
            namespace, "nope", CANARY_10, OWNED, engine="resnet"
        )


def test_virtualservice_weights_and_race(
    k8s_api: Any, namespace: str, virtualservice_crd: str
) -> None:
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "resnet", "namespace": namespace, "annotations": OPT_IN},
        "spec": {
            "hosts": ["resnet"],
            "http": [
                {
                    "name": "infer",
                    "timeout": "5s",
                    "route": [{"destination": {"host": "resnet-r1", "port": {"number": 8000}}}],
                },
            ],
        },
    }
    custom(k8s_api).create_namespaced_custom_object(
        VIRTUALSERVICE.group, VIRTUALSERVICE.version, namespace, VIRTUALSERVICE.plural, body
    )
    race = [{"op": "add", "path": "/spec/http/0/retries", "value": {"attempts": 2}}]
    io = RacingIO(k8s_api, VIRTUALSERVICE, namespace, race)
    assert io.set_virtualservice_weights(
        namespace, "resnet", CANARY_10, OWNED, ["infer"], engine="resnet"
    )
    after = read(k8s_api, VIRTUALSERVICE, namespace)
    assert after["spec"]["http"][0]["retries"] == {"attempts": 2}
    assert after["spec"]["http"][0]["timeout"] == "5s"
    assert virtualservice_weights(after, OWNED) == [{"resnet-r1": 90, "resnet-r2": 10}]
    assert io.reads == 2
