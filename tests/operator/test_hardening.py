"""Pods a tenant's spec makes, hardened whatever the spec says; and what the installer's policy
refuses before any pod exists (pure: manifests and decide, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from trtops_operator import manifests
from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec
from trtops_operator.reconcile import Observed, decide

NOW = "2026-01-01T00:00:00Z"
SPEC: dict[str, Any] = {
    "model": {"uri": "models/m.onnx"},
    "build": {"targets": [{"gpuProduct": "H100"}]},
    "storage": {"claimName": "plans"},
}


def engine(spec: dict[str, Any]) -> manifests.Engine:
    return manifests.Engine("e", "ns", "u1", TrtEngineSpec.model_validate(spec))


def pods(spec: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    e = engine(spec)
    job = manifests.render_build_job(e, "H100", "k" * 64, name="j", config=config)
    plan = manifests.PlanRef("H100", "k" * 64, "/plans/k", "fp16", "tensorrt")
    dep = manifests.render_deployment(e, plan, name="d", revision="r1", config=config)
    return [job["spec"]["template"]["spec"], dep["spec"]["template"]["spec"]]


def test_build_and_serving_pods_have_no_token_bounded_memory_and_scratch() -> None:
    """Before: both mounted the namespace's default ServiceAccount token, serving pods had no
    memory request or limit (BestEffort), and /tmp was an unbounded emptyDir."""
    config = OperatorConfig(serve_memory_limit="6Gi", build_memory_limit="12Gi")
    build, serve = pods(SPEC, config)
    for pod in (build, serve):
        assert pod["automountServiceAccountToken"] is False
        (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp["emptyDir"]["sizeLimit"]
    assert build["containers"][0]["resources"]["limits"]["memory"] == "12Gi"
    assert serve["containers"][0]["resources"]["limits"]["memory"] == "6Gi"
    assert serve["containers"][0]["resources"]["requests"]["memory"] == "1Gi"


def test_the_spec_sets_serving_memory_and_a_request_alone_is_also_the_limit() -> None:
    spec = {**SPEC, "serving": {"resources": {"requests": {"memory": "24Gi"}}}}
    res = pods(spec, OperatorConfig())[1]["containers"][0]["resources"]
    assert (res["requests"]["memory"], res["limits"]["memory"]) == ("24Gi", "24Gi")


def refusal(spec: dict[str, Any], config: OperatorConfig) -> str | None:
    body = {"metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1}}
    decision = decide({**body, "spec": spec}, Observed(), config, NOW)
    if decision.invalid:
        assert not decision.create
    return decision.invalid


@pytest.mark.parametrize(
    ("patch", "config", "says"),
    [
        # Before: tolerations [{operator: Exists}] let a build land on a control-plane node.
        ({"build": {"tolerations": [{"operator": "Exists"}]}}, OperatorConfig(), "every taint"),
        (
            {"serving": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}},
            OperatorConfig(allowed_toleration_keys="nvidia.com/gpu"),
            "key dedicated",
        ),
        (
            {"build": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}},
            OperatorConfig(allowed_node_selector_keys="pool"),
            "key node-role.kubernetes.io/control-plane",
        ),
        ({"model": {"uri": "pvc://plans/../../etc/x.onnx"}}, OperatorConfig(), "'..'"),
    ],
)
def test_the_installers_policy_refuses_before_any_pod(
    patch: dict[str, Any], config: OperatorConfig, says: str
) -> None:
    spec = {**SPEC, **{k: {**SPEC.get(k, {}), **v} for k, v in patch.items()}}
    message = refusal(spec, config)
    assert message is not None
    assert says in message


def test_allowed_placement_still_builds() -> None:
    spec = {
        **SPEC,
        "build": {
            **SPEC["build"],
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "nodeSelector": {"pool": "gpu"},
        },
    }
    config = OperatorConfig(allowed_toleration_keys="dedicated", allowed_node_selector_keys="pool")
    assert refusal(spec, config) is None
    assert (
        refusal(
            {**spec, "build": {**spec["build"], "tolerations": [{"operator": "Exists"}]}},
            OperatorConfig(allowed_toleration_keys="*"),
        )
        is None
    )


def test_each_engine_gets_a_network_policy_for_its_serving_pods() -> None:
    """Before, no NetworkPolicy existed anywhere: any pod could call any engine."""
    policy = manifests.render_network_policy(engine(SPEC))["spec"]
    assert policy["podSelector"]["matchLabels"] == {
        "trtops.dev/engine": "e",
        "trtops.dev/component": "serve",
    }
    inference, metrics = policy["ingress"]
    assert {p["port"] for p in inference["ports"]} == {manifests.HTTP_PORT, manifests.GRPC_PORT}
    clients = inference["from"][0]["podSelector"]["matchExpressions"][0]
    assert (clients["key"], clients["values"]) == ("trtops.dev/client", ["e", "true"])
    assert [p["port"] for p in metrics["ports"]] == [manifests.METRICS_PORT]
