"""Deleting an engine takes its backends out of the user's route and leaves the rest as it was:
the pure patches, then the real API server (HTTPRoute from the Gateway API CRDs)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from trtops_operator.canary.routers import httproute_release_patch, virtualservice_release_patch
from trtops_operator.k8s import HTTPROUTE, RouterIO

from tests.canary.test_router_io import HEADER_FILTER, create_route, read
from tests.canary.test_routers import patched

OWNED = ("conv", "conv-canary")
MID_CANARY = [
    # The rule the user wrote for the engine, mid-canary: stable 70, canary 30, a filter.
    {
        "filters": [HEADER_FILTER],
        "backendRefs": [
            {"name": "conv", "port": 8000, "weight": 70},
            {"name": "conv-canary", "port": 8000, "weight": 30},
        ],
    },
    # A rule shared with someone else's backend.
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/shared"}}],
        "backendRefs": [
            {"name": "legacy", "port": 9000, "weight": 50},
            {"name": "conv", "port": 8000, "weight": 35},
            {"name": "conv-canary", "port": 8000, "weight": 15},
        ],
    },
    # A rule that has nothing to do with the engine.
    {
        "matches": [{"path": {"type": "PathPrefix", "value": "/debug"}}],
        "backendRefs": [{"name": "debug", "port": 80}],
    },
]


def _route(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "r", "namespace": "ns"}, "spec": {"rules": copy.deepcopy(rules)}}


def test_release_drops_the_canary_and_leaves_every_other_field() -> None:
    route = _route(MID_CANARY)
    after = patched(route, httproute_release_patch(route, "conv", OWNED))
    rules = after["spec"]["rules"]
    assert rules[0] == {
        "filters": [HEADER_FILTER],
        "backendRefs": [{"name": "conv", "port": 8000, "weight": 100}],
    }
    assert rules[1]["backendRefs"] == [{"name": "legacy", "port": 9000, "weight": 50}]
    assert rules[1]["matches"] == MID_CANARY[1]["matches"]
    assert rules[2] == MID_CANARY[2]
    assert httproute_release_patch(after, "conv", OWNED) == []  # released twice: no change


def test_release_of_a_route_at_rest_changes_nothing() -> None:
    route = _route([{"backendRefs": [{"name": "conv", "port": 8000, "weight": 100}]}])
    assert httproute_release_patch(route, "conv", OWNED) == []
    route = _route([{"backendRefs": [{"name": "other", "port": 1}]}])
    assert httproute_release_patch(route, "conv", OWNED) == []


def test_virtualservice_release_gives_the_canary_share_back() -> None:
    vs = {
        "metadata": {"name": "v", "namespace": "ns"},
        "spec": {
            "http": [
                {
                    "name": "main",
                    "route": [
                        {"destination": {"host": "conv"}, "weight": 60},
                        {"destination": {"host": "conv-canary"}, "weight": 20},
                        {"destination": {"host": "legacy"}, "weight": 20},
                    ],
                }
            ]
        },
    }
    after = patched(vs, virtualservice_release_patch(vs, "conv", OWNED))
    assert after["spec"]["http"][0]["route"] == [
        {"destination": {"host": "conv"}, "weight": 80},
        {"destination": {"host": "legacy"}, "weight": 20},
    ]
    assert virtualservice_release_patch(after, "conv", OWNED) == []


@pytest.mark.cluster
def test_release_on_the_api_server(k8s_api: Any, namespace: str) -> None:
    # The route opts in to engine "resnet" (test_router_io's OPT_IN), whose Services these are.
    rules = copy.deepcopy(MID_CANARY)
    for rule in rules:
        for ref in rule["backendRefs"]:
            ref["name"] = ref["name"].replace("conv", "resnet")
    create_route(k8s_api, namespace, rules)
    io = RouterIO(k8s_api)
    owned = ("resnet", "resnet-canary")
    assert not io.release("gatewayAPI", namespace, "resnet", "conv", OWNED)  # not opted in
    assert io.release("gatewayAPI", namespace, "resnet", "resnet", owned)
    after = read(k8s_api, HTTPROUTE, namespace)["spec"]["rules"]
    assert [[r["name"] for r in rule["backendRefs"]] for rule in after] == [
        ["resnet"],
        ["legacy"],
        ["debug"],
    ]
    assert after[0]["filters"] == [HEADER_FILTER]
    assert after[0]["backendRefs"][0]["weight"] == 100
    assert after[1]["backendRefs"][0]["weight"] == 50
    # Once more: nothing to write; a route deleted meanwhile is not an error either.
    assert not io.release("gatewayAPI", namespace, "resnet", "resnet", owned)
    assert not io.release("gatewayAPI", namespace, "gone", "resnet", owned)
