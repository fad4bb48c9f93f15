"""Router math and minimal patches (pure). Patches are applied with ``jsonpatch`` (a kopf
dependency, RFC 6902) to check what the object looks like afterwards, not only the ops."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch  # type: ignore[import-untyped]  # a kopf dependency without stubs
import pytest
from trtops_operator.canary.errors import RouterMisconfigured
from trtops_operator.canary.routers import (
    canary_replicas,
    effective_weight,
    httproute_patch,
    httproute_weights,
    split,
    virtualservice_patch,
    virtualservice_weights,
)

OWNED = {"resnet-r1", "resnet-r2", "resnet-r0"}


def route(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "resnet", "namespace": "ml", "resourceVersion": "7"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": list(rules)},
    }


def ref(name: str, weight: int | None = None, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "port": 8000, **extra}
    if weight is not None:
        r["weight"] = weight
    return r


def patched(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), ops)
    return out


def test_first_canary_weight_adds_the_canary_ref_next_to_stable() -> None:
    r = route(
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
            "backendRefs": [ref("resnet-r1")],
        }
    )
    after = patched(r, httproute_patch(r, {"resnet-r1": 90, "resnet-r2": 10}, OWNED))
    assert after["spec"]["rules"][0]["backendRefs"] == [
        {"name": "resnet-r1", "port": 8000, "weight": 90},
        {"name": "resnet-r2", "port": 8000, "weight": 10},
    ]
    assert after["spec"]["rules"][0]["matches"] == r["spec"]["rules"][0]["matches"]
    assert httproute_weights(after, OWNED) == [{"resnet-r1": 90, "resnet-r2": 10}]


def test_foreign_refs_rules_and_filters_are_left_alone_and_keep_their_share() -> None:
    header = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"add": [{"name": "x", "value": "1"}]},
    }
    r = route(
        {
            "backendRefs": [ref("legacy", 100), ref("resnet-r1", 300), ref("resnet-r2", 0)],
            "filters": [header],
        },
        {"matches": [{"path": {"value": "/admin"}}], "backendRefs": [ref("admin", 1)]},
        {"backendRefs": [ref("resnet-r1", 1, namespace="other")]},  # another namespace's Service
        {"backendRefs": [ref("resnet-r1", 1, kind="ServiceImport", group="multicluster.x-k8s.io")]},
    )
    ops = httproute_patch(r, {"resnet-r1": 50, "resnet-r2": 50}, OWNED)
    assert [op["path"] for op in ops] == [
        "/spec/rules/0/backendRefs/1/weight",
        "/spec/rules/0/backendRefs/2/weight",
    ]
    after = patched(r, ops)
    refs = after["spec"]["rules"][0]["backendRefs"]
    assert [x["weight"] for x in refs] == [100, 150, 150]  # legacy still gets 100/400
    assert after["spec"]["rules"][0]["filters"] == [header]
    assert after["spec"]["rules"][1:] == r["spec"]["rules"][1:]


def test_no_change_gives_an_empty_patch() -> None:
    r = route({"backendRefs": [ref("resnet-r1", 90), ref("resnet-r2", 10)]})
    assert httproute_patch(r, {"resnet-r1": 90, "resnet-r2": 10}, OWNED) == []


def test_rollback_keeps_the_canary_ref_at_zero_and_promotion_drops_old_refs() -> None:
    r = route({"backendRefs": [ref("resnet-r1", 50), ref("resnet-r2", 50)]})
    back = patched(r, httproute_patch(r, {"resnet-r1": 100, "resnet-r2": 0}, OWNED))
    assert httproute_weights(back, OWNED) == [{"resnet-r1": 100, "resnet-r2": 0}]
    promoted = patched(r, httproute_patch(r, {"resnet-r2": 100}, OWNED))
    assert promoted["spec"]["rules"][0]["backendRefs"] == [ref("resnet-r2", 100)]


def test_every_rule_that_references_us_is_managed() -> None:
    r = route(
        {"backendRefs": [ref("resnet-r1")]}, {"backendRefs": [ref("resnet-r1", 5), ref("x", 5)]}
    )
    after = patched(r, httproute_patch(r, {"resnet-r1": 80, "resnet-r2": 20}, OWNED))
    assert httproute_weights(after, OWNED) == [
        {"resnet-r1": 80, "resnet-r2": 20},
        {"resnet-r1": 4, "resnet-r2": 1},  # the owned total (5) is split; "x" keeps its 5
    ]


def test_a_route_without_our_services_is_a_user_error() -> None:
    with pytest.raises(RouterMisconfigured, match="no rule with a backendRef"):
        httproute_patch(route({"backendRefs": [ref("other")]}), {"resnet-r2": 10}, OWNED)


@pytest.mark.parametrize(
    ("total", "percents", "out"),
    [
        (100, {"a": 90, "b": 10}, {"a": 90, "b": 10}),
        (7, {"a": 50, "b": 50}, {"a": 4, "b": 3}),
        (1, {"a": 90, "b": 10}, {"a": 1, "b": 0}),
        (0, {"a": 90, "b": 10}, {"a": 0, "b": 0}),
        (300, {"a": 67, "b": 33}, {"a": 201, "b": 99}),
    ],
)
def test_split(total: int, percents: dict[str, int], out: dict[str, int]) -> None:
    assert split(total, percents) == out
    assert sum(out.values()) == (total if sum(percents.values()) else 0)


def vs(*http: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "resnet", "namespace": "ml", "resourceVersion": "3"},
        "spec": {"hosts": ["resnet.example.com"], "http": list(http)},
    }


def dest(host: str, weight: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": host, "port": {"number": 8000}}}
    if weight is not None:
        d["weight"] = weight
    return d


def test_virtualservice_weights_follow_istio_rules() -> None:
    v = vs(
        {
            "name": "primary",
            "retries": {"attempts": 3},
            "route": [dest("resnet-r1.ml.svc.cluster.local")],
        },
        {"name": "mirror", "route": [dest("resnet-r1", 80), dest("shadow", 20)]},
        {"name": "elsewhere", "route": [dest("resnet-r1.other.svc.cluster.local")]},
    )
    after = patched(v, virtualservice_patch(v, {"resnet-r1": 90, "resnet-r2": 10}, OWNED))
    assert after["spec"]["http"][0]["route"] == [
        {
            "destination": {"host": "resnet-r1.ml.svc.cluster.local", "port": {"number": 8000}},
            "weight": 90,
        },
        {
            "destination": {"host": "resnet-r2.ml.svc.cluster.local", "port": {"number": 8000}},
            "weight": 10,
        },
    ]
    assert after["spec"]["http"][0]["retries"] == {"attempts": 3}
    assert virtualservice_weights(after, OWNED)[1] == {"resnet-r1": 72, "resnet-r2": 8}  # 80 split
    assert after["spec"]["http"][1]["route"][1] == dest("shadow", 20)
    assert after["spec"]["http"][2] == v["spec"]["http"][2]  # not our namespace's Service
    for rule in after["spec"]["http"][:2]:
        assert sum(d["weight"] for d in rule["route"]) == 100


def test_virtualservice_only_named_routes() -> None:
    v = vs({"name": "a", "route": [dest("resnet-r1")]}, {"name": "b", "route": [dest("resnet-r1")]})
    after = patched(v, virtualservice_patch(v, {"resnet-r1": 50, "resnet-r2": 50}, OWNED, ["b"]))
    assert after["spec"]["http"][0] == v["spec"]["http"][0]
    assert virtualservice_weights(after, OWNED, ["b"]) == [{"resnet-r1": 50, "resnet-r2": 50}]
    with pytest.raises(RouterMisconfigured, match="no http route named"):
        virtualservice_patch(v, {"resnet-r2": 1}, OWNED, ["c"])


@pytest.mark.parametrize(
    ("kind", "stable", "weight", "pods", "share"),
    [
        ("gatewayAPI", 4, 0, 1, 0.0),
        ("gatewayAPI", 4, 10, 1, 10.0),
        ("gatewayAPI", 10, 35, 4, 35.0),
        ("replicas", 4, 0, 0, 0.0),
        ("replicas", 4, 10, 1, 20.0),  # one pod is the smallest canary: 1/5
        ("replicas", 9, 10, 1, 10.0),
        ("replicas", 3, 50, 3, 50.0),
        ("replicas", 3, 80, 3, 50.0),  # capped: the canary never outgrows stable
        ("replicas", 0, 10, 1, 100.0),
    ],
)
def test_replica_math(kind: Any, stable: int, weight: int, pods: int, share: float) -> None:
    assert canary_replicas(kind, stable, weight) == pods
    assert effective_weight(kind, stable, weight) == pytest.approx(share)


def test_weight_zero_foreign_refs_do_not_shrink_our_share() -> None:
    r = route({"backendRefs": [ref("mirror-target", 0), ref("resnet-r1", 1)]})
    after = patched(r, httproute_patch(r, {"resnet-r1": 90, "resnet-r2": 10}, OWNED))
    assert [(x["name"], x["weight"]) for x in after["spec"]["rules"][0]["backendRefs"]] == [
        ("mirror-target", 0),
        ("resnet-r1", 90),
        ("resnet-r2", 10),
    ]
