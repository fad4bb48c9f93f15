"""The API server itself refuses invalid TrtEngines, with a message that names the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd")]

VALID: dict[str, Any] = {
    "apiVersion": "trtops.dev/v1alpha1",
    "kind": "TrtEngine",
    "metadata": {"name": "valid"},
    "spec": {
        "model": {"uri": "pvc://models/m.onnx"},
        "build": {
            "precision": "fp16",
            "targets": [{"gpuProduct": "NVIDIA-H100-80GB-HBM3"}],
            "profiles": [
                {
                    "input": "input",
                    "min": [1, 3, 32, 32],
                    "opt": [8, 3, 32, 32],
                    "max": [32, 3, 32, 32],
                }
            ],
        },
        "storage": {"claimName": "trt-plans"},
        "rollout": {
            "trafficRouter": {"replicas": {}},
            "steps": [{"setWeight": 10, "pauseSeconds": 60}, {"setWeight": 50}],
        },
    },
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


CASES = [
    ("int8 without calibration", _set("spec.build.precision", "int8"), "spec.build.calibration"),
    ("fp8 without calibration", _set("spec.build.precision", "fp8"), "spec.build.calibration"),
    ("unknown precision", _set("spec.build.precision", "int4"), "spec.build.precision"),
    ("opt above max", _set("spec.build.profiles.0.opt", [64, 3, 32, 32]), "spec.build.profiles"),
    ("min above opt", _set("spec.build.profiles.0.min", [16, 3, 32, 32]), "spec.build.profiles"),
    ("ranks differ", _set("spec.build.profiles.0.max", [32, 3, 32]), "spec.build.profiles"),
    (
        "decreasing weights",
        _set("spec.rollout.steps", [{"setWeight": 50}, {"setWeight": 10}]),
        "spec.rollout.steps",
    ),
    (
        "weight above 100",
        _set("spec.rollout.steps", [{"setWeight": 120}]),
        "spec.rollout.steps[0].setWeight",
    ),
    (
        "duplicate targets",
        _set("spec.build.targets", [{"gpuProduct": "A"}, {"gpuProduct": "A"}]),
        "spec.build.targets",
    ),
    ("no targets for tensorrt", _set("spec.build.targets", []), "spec.build.targets"),
    (
        "targets for onnxruntime",
        _set("spec.serving", {"backend": "onnxruntime"}),
        "spec.build.targets",
    ),
    (
        "two traffic routers",
        _set("spec.rollout.trafficRouter", {"replicas": {}, "gatewayAPI": {"httpRoute": "r"}}),
        "spec.rollout.trafficRouter",
    ),
    ("bad model uri", _set("spec.model.uri", "ftp://bucket/m.onnx"), "spec.model.uri"),
    ("path escape", _set("spec.model.uri", "models/../../etc/passwd"), "spec.model.uri"),
    ("short model sha256", _set("spec.model.sha256", "abc"), "spec.model.sha256"),
    (
        "optimization level 6",
        _set("spec.build.optimizationLevel", 6),
        "spec.build.optimizationLevel",
    ),
    ("negative replicas", _set("spec.serving.replicas", -1), "spec.serving.replicas"),
    (
        "both pauses",
        _set(
            "spec.rollout.steps", [{"setWeight": 5, "pauseSeconds": 5, "pauseUntilPromoted": True}]
        ),
        "spec.rollout.steps",
    ),
    (
        "error rate above 1",
        _set(
            "spec.rollout.analysis",
            {"prometheus": {"address": "http://p:9090"}, "slo": {"maxErrorRate": 2}},
        ),
        "spec.rollout.analysis.slo.maxErrorRate",
    ),
    (
        "gate without thresholds",
        _set("spec.build.accuracy", {"validation": {"uri": "val.npz"}}),
        "spec.build.accuracy",
    ),
    (
        "unknown toleration operator",
        _set("spec.serving.tolerations", [{"key": "k", "operator": "Lt", "value": "1"}]),
        "spec.serving.tolerations[0].operator",
    ),
    (
        "toleration key not a label key",
        _set("spec.build.tolerations", [{"key": "a b", "operator": "Exists"}]),
        "spec.build.tolerations[0].key",
    ),
    (
        "too many tolerations",
        _set("spec.build.tolerations", [{"operator": "Exists"}] * 17),
        "spec.build.tolerations",
    ),
    (
        "judge confidence above 0.999",
        _set(
            "spec.rollout.analysis",
            {"prometheus": {"address": "http://p:9090"}, "judge": {"confidence": 1.5}},
        ),
        "spec.rollout.analysis.judge.confidence",
    ),
    ("unknown field", _set("spec.build.fp16", True), "spec.build"),
    ("name too long", _set("metadata.name", "n" * 41), "metadata.name"),
    ("missing storage", lambda b: b["spec"].pop("storage"), "spec.storage"),
    # A cron field out of range is refused with the ranges, not left for the operator to fail.
    ("schedule minute 61", _set("spec.build.schedule", "61 * * * *"), "minute 0-59"),
    ("schedule hour 24", _set("spec.build.schedule", "0 24 * * *"), "hour 0-23"),
    ("schedule day 0", _set("spec.build.schedule", "0 3 0 * *"), "day-of-month 1-31"),
    ("schedule month 13", _set("spec.build.schedule", "0 3 * 13 *"), "month 1-12"),
    ("schedule weekday 8", _set("spec.build.schedule", "0 3 * * 8"), "day-of-week 0-7"),
    ("schedule step 0", _set("spec.build.schedule", "*/0 * * * *"), "step /n (n >= 1)"),
]


def test_the_valid_base_is_accepted(k8s_api: Any, namespace: str) -> None:
    from kubernetes import client

    client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        "trtops.dev", "v1alpha1", namespace, "trtengines", copy.deepcopy(VALID), dry_run="All"
    )


def test_sensible_tolerations_are_accepted_as_written(k8s_api: Any, namespace: str) -> None:
    from kubernetes import client

    tolerations = [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "ml-gpu"},
        {"key": "node.example/draining", "effect": "NoExecute", "tolerationSeconds": 300},
        {"operator": "Exists"},
    ]
    body = copy.deepcopy(VALID)
    body["spec"]["build"]["tolerations"] = tolerations
    body["spec"]["serving"] = {"tolerations": tolerations}
    created = client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        "trtops.dev", "v1alpha1", namespace, "trtengines", body, dry_run="All"
    )
    # No default is filled in (an unset operator stays unset), so a GitOps diff stays quiet.
    assert created["spec"]["build"]["tolerations"] == tolerations
    assert created["spec"]["serving"]["tolerations"] == tolerations


# Each CEL rule of a toleration, on either list: the refusal names the entry and says what to do.
TOLERATION_CASES = [
    (
        "Exists with a value",
        "build",
        {"key": "nvidia.com/gpu", "operator": "Exists", "value": "present"},
        "operator Exists matches every value of the key: drop value, or use operator Equal",
    ),
    (
        "tolerationSeconds without effect",
        "serving",
        {"key": "k", "operator": "Exists", "tolerationSeconds": 60},
        "tolerationSeconds only applies to effect NoExecute: set effect NoExecute,"
        " or drop tolerationSeconds",
    ),
    (
        "tolerationSeconds with NoSchedule",
        "build",
        {"key": "k", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 60},
        "tolerationSeconds only applies to effect NoExecute",
    ),
    (
        "no key, no operator",
        "serving",
        {"value": "v", "effect": "NoSchedule"},
        "an empty key matches every taint and needs operator Exists:"
        " set key, or set operator Exists",
    ),
    (
        "empty key with Equal",
        "build",
        {"key": "", "operator": "Equal"},
        "an empty key matches every taint and needs operator Exists",
    ),
]


@pytest.mark.parametrize(
    ("what", "where", "toleration", "fix"), TOLERATION_CASES, ids=[c[0] for c in TOLERATION_CASES]
)
def test_nonsense_toleration_is_refused_saying_what_to_fix(
    k8s_api: Any, namespace: str, what: str, where: str, toleration: dict[str, Any], fix: str
) -> None:
    from kubernetes import client

    body = copy.deepcopy(VALID)
    # The second entry is the bad one: the message must point at it, not at the list.
    body["spec"].setdefault(where, {})["tolerations"] = [{"operator": "Exists"}, toleration]
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
            "trtops.dev", "v1alpha1", namespace, "trtengines", body, dry_run="All"
        )
    assert refused.value.status == 422, what
    message = json.loads(refused.value.body)["message"]
    assert f"spec.{where}.tolerations[1]" in message, message
    assert fix in message, message


@pytest.mark.parametrize(("what", "mutate", "field"), CASES, ids=[c[0] for c in CASES])
def test_invalid_resource_is_refused_naming_the_field(
    k8s_api: Any, namespace: str, what: str, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    from kubernetes import client

    body = copy.deepcopy(VALID)
    mutate(body)
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
            "trtops.dev",
            "v1alpha1",
            namespace,
            "trtengines",
            body,
            dry_run="All",
            field_validation="Strict",
        )
    assert refused.value.status in (400, 422), what  # strict field validation answers 400
    message = json.loads(refused.value.body)["message"]
    assert field in message, message


def _dry_run_create(k8s_api: Any, namespace: str, body: dict[str, Any]) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        "trtops.dev", "v1alpha1", namespace, "trtengines", body, dry_run="All"
    )


def test_analysis_without_a_weighted_step_is_refused_saying_what_to_change(
    k8s_api: Any, namespace: str
) -> None:
    """Issue 13, input 2: analysis with only ``{setWeight: 0}`` steps can never see canary
    traffic, so it could only promote without evidence. The API server refuses it."""
    from kubernetes import client

    body = copy.deepcopy(VALID)
    body["spec"]["rollout"]["steps"] = [{"setWeight": 0, "pauseSeconds": 60}]
    body["spec"]["rollout"]["analysis"] = {"prometheus": {"address": "http://p:9090"}}
    with pytest.raises(client.ApiException) as refused:
        _dry_run_create(k8s_api, namespace, body)
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert "spec.rollout" in message, message
    assert "setWeight above 0" in message, message
    assert "{setWeight: 10, pauseSeconds: 60}" in message, message
    # The same steps without analysis are fine (a plain timed rollout), and so is analysis
    # with a step that gives the canary traffic; the judge's defaults are filled in.
    body["spec"]["rollout"].pop("analysis")
    _dry_run_create(k8s_api, namespace, body)
    body["spec"]["rollout"]["analysis"] = {"prometheus": {"address": "http://p:9090"}}
    body["spec"]["rollout"]["steps"] = [{"setWeight": 0, "pauseSeconds": 60}, {"setWeight": 10}]
    created = _dry_run_create(k8s_api, namespace, body)
    assert created["spec"]["rollout"]["analysis"]["judge"] == {
        "confidence": 0.95,
        "minLatencyEffect": 1.25,
        "maxErrorRateIncrease": 0.01,
        "maxClientErrorRateIncrease": 0.05,
        "catastrophicErrorRate": 0.25,
    }
