"""The CRD and the pydantic models cannot drift: every validation case, accepted or refused,
gets the same verdict from the real API server (dry-run create, strict field validation) and
from ``TrtEngineSpec``. The operator re-validates what the API server admitted, so a model that
refuses more leaves a resource admitted but never built; one that refuses less lets a resource
that slipped past an older CRD be half-understood."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from trtops_operator.models import TrtEngineSpec
from trtops_worker.builder.precision import MODELOPT_CALIBRATION_METHODS

from tests.operator.test_crd_validation import CASES, TOLERATION_CASES, VALID, _set

REPO = Path(__file__).resolve().parents[2]
Mutate = Callable[[dict[str, Any]], None]


def _tolerations(where: str, toleration: dict[str, Any]) -> Mutate:
    def mutate(body: dict[str, Any]) -> None:
        body["spec"].setdefault(where, {})["tolerations"] = [{"operator": "Exists"}, toleration]

    return mutate


def _both(*mutations: Mutate) -> Mutate:
    def mutate(body: dict[str, Any]) -> None:
        for m in mutations:
            m(body)

    return mutate


ONNXRUNTIME = _both(_set("spec.build.targets", []), _set("spec.serving.backend", "onnxruntime"))


def INT8(body: dict[str, Any]) -> None:
    body["spec"]["build"].update(precision="int8", calibration={"uri": "calib.npz"})


GATEWAY = _set("spec.rollout.trafficRouter", {"gatewayAPI": {"httpRoute": "route"}})


def _experiment(**fields: Any) -> Mutate:
    """spec.experiment over a Gateway API route; ``fields`` replace the defaults."""
    exp = {
        "variants": [{"name": "int8", "precision": "int8", "weight": 30}],
        "durationSeconds": 600,
        "prometheus": {"address": "http://prometheus:9090"},
        **fields,
    }
    exp = {k: v for k, v in exp.items() if v is not None}
    return _both(
        GATEWAY, _set("spec.build.calibration", {"uri": "calib.npz"}), _set("spec.experiment", exp)
    )


def _variants(*pairs: tuple[str, str, int]) -> list[dict[str, Any]]:
    return [{"name": n, "precision": p, "weight": w} for n, p, w in pairs]


# What the API server refuses beyond test_crd_validation's cases: the inputs the models once
# accepted, and the patterns they lacked. (metadata.name's bound is the API server's alone.)
REFUSED: list[tuple[str, Mutate]] = [
    *[(what, m) for what, m, _ in CASES if what != "name too long"],
    *[(what, _tolerations(where, t)) for what, where, t, _ in TOLERATION_CASES],
    ("'..' in a pvc uri", _set("spec.model.uri", "pvc://models/a/../m.onnx")),
    ("'..' in the calibration uri", _set("spec.build.calibration", {"uri": "c/../x.npz"})),
    ("cpuFallback on onnxruntime", _both(ONNXRUNTIME, _set("spec.serving.cpuFallback", True))),
    (
        "calibration method the worker cannot do",
        _both(
            _set("spec.build.precision", "int8"),
            INT8,
            _set("spec.build.calibration.method", "percentile"),
        ),
    ),
    ("experiment without an end", _experiment(durationSeconds=None)),
    (
        "experiment weights over 90",
        _experiment(variants=_variants(("a", "fp32", 50), ("b", "int8", 41))),
    ),
    (
        "experiment variant names repeat",
        _experiment(variants=_variants(("a", "fp32", 5), ("a", "int8", 5))),
    ),
    (
        "experiment precisions repeat",
        _experiment(variants=_variants(("a", "int8", 5), ("b", "int8", 5))),
    ),
    (
        "experiment variant at the baseline's precision",
        _experiment(variants=_variants(("a", "fp16", 5))),
    ),
    (
        "experiment int8 variant without calibration",
        _both(_experiment(), lambda b: b["spec"]["build"].pop("calibration")),
    ),
    (
        "experiment on the replicas router",
        _both(_experiment(), _set("spec.rollout.trafficRouter", {"replicas": {}})),
    ),
    ("experiment without a Prometheus", _experiment(prometheus=None)),
    (
        "experiment beside a canary judged on shadow requests",
        _both(
            _experiment(),
            _set(
                "spec.rollout.analysis",
                {"prometheus": {"address": "http://prometheus:9090"}, "shadow": {"percent": 10}},
            ),
        ),
    ),
    (
        "experiment fp8 variant on onnxruntime",
        _both(ONNXRUNTIME, _experiment(variants=_variants(("a", "fp8", 5)))),
    ),
    (
        "experiment variant name not a DNS label",
        _experiment(variants=_variants(("Int8", "int8", 5))),
    ),
    (
        "experiment with four variants",
        _experiment(
            variants=_variants(
                ("a", "fp32", 5), ("b", "int8", 5), ("c", "bf16", 5), ("d", "tf32", 5)
            )
        ),
    ),
    ("experiment hardSlo empty", _experiment(hardSlo={})),
    ("experiment agreement floor empty", _experiment(recommend={"minOutputAgreement": {}})),
    ("modelName with a space", _set("spec.serving.modelName", "my model")),
    ("schedule with six fields", _set("spec.build.schedule", "0 0 3 * * *")),
    ("schedule not cron", _set("spec.build.schedule", "every day")),
    (
        "sample calibration without sampling",
        _both(INT8, _set("spec.build.calibration.source", "sample")),
    ),
    (
        "sample validation with sampling off",
        _both(
            _set(
                "spec.build.accuracy",
                {"validation": {"uri": "v.npz", "source": "sample"}, "minCosineSimilarity": 0.99},
            ),
            _set("spec.serving.sampling", {"enabled": False}),
        ),
    ),
    (
        "sampling maxBytes too small",
        _set("spec.serving.sampling", {"enabled": True, "maxBytes": 10}),
    ),
    ("latency ratio below 1", _set("spec.build.regressionGate", {"maxLatencyRatio": 0.9})),
    ("calibration source unknown", _both(INT8, _set("spec.build.calibration.source", "traffic"))),
    ("cpu not a quantity", _set("spec.serving.resources", {"requests": {"cpu": "lots"}})),
    (
        "httpRoute not an object name",
        _set("spec.rollout.trafficRouter", {"gatewayAPI": {"httpRoute": "My_Route"}}),
    ),
    (
        "p99 below a microsecond",
        _set(
            "spec.rollout.analysis",
            {"prometheus": {"address": "http://p:9090"}, "slo": {"p99LatencyMs": 0.0001}},
        ),
    ),
    ("cost with no price", _set("spec.cost", {"gpuHourPrice": 0, "cpuHourPrice": 0})),
    ("cost with a negative price", _set("spec.cost", {"gpuHourPrice": -1, "cpuHourPrice": 0})),
    ("cost without cpuHourPrice", _set("spec.cost", {"gpuHourPrice": 2.5})),
    (
        "cost in a currency that is no ISO 4217 code",
        _set("spec.cost", {"gpuHourPrice": 2.5, "cpuHourPrice": 0.04, "currency": "usd"}),
    ),
]

ACCEPTED: list[tuple[str, Mutate]] = [
    ("the valid base", lambda b: None),
    ("onnxruntime without targets", ONNXRUNTIME),
    ("cpuFallback on tensorrt", _set("spec.serving.cpuFallback", True)),
    (
        "int8, max calibration",
        _both(
            _set("spec.build.precision", "int8"), INT8, _set("spec.build.calibration.method", "max")
        ),
    ),
    (
        "pauseSeconds with pauseUntilPromoted false",
        _set(
            "spec.rollout.steps", [{"setWeight": 5, "pauseSeconds": 5, "pauseUntilPromoted": False}]
        ),
    ),
    (
        "gate with one threshold",
        _set("spec.build.accuracy", {"validation": {"uri": "v.npz"}, "minCosineSimilarity": 0.99}),
    ),
    ("pvc uri with dots in a name", _set("spec.model.uri", "pvc://models/v1.2/m.onnx")),
    ("quantities", _set("spec.serving.resources", {"requests": {"cpu": "500m", "memory": "1Gi"}})),
    ("sensible tolerations", _tolerations("serving", {"key": "dedicated", "value": "ml-gpu"})),
    (
        "cost, GPU only, default currency",
        _set("spec.cost", {"gpuHourPrice": 2.5, "cpuHourPrice": 0}),
    ),
    (
        "cost in euros",
        _set("spec.cost", {"gpuHourPrice": 2.1, "cpuHourPrice": 0.035, "currency": "EUR"}),
    ),
    ("a daily schedule", _set("spec.build.schedule", "0 3 * * *")),
    ("a schedule macro", _set("spec.build.schedule", "@weekly")),
    ("the last day of the month", _set("spec.build.schedule", "0 3 L * *")),
    ("months and days by name", _set("spec.build.schedule", "*/15 8-18 * jan-mar,OCT Mon-Fri")),
    (
        "sample calibration with sampling on",
        _both(
            _set("spec.build.precision", "int8"),
            INT8,
            _set("spec.build.calibration.source", "sample"),
            _set("spec.serving.sampling", {"enabled": True, "maxBytes": 1048576}),
            _set("spec.build.schedule", "30 2 * * 1-5"),
            _set("spec.build.regressionGate", {"maxLatencyRatio": 1.2, "maxAccuracyDrop": 0.01}),
        ),
    ),
    ("experiment: one int8 variant for 10 min", _experiment()),
    (
        "experiment: fp32 and int8 until 500 requests, the analysis' Prometheus, a full rule",
        _both(
            _set("spec.rollout.analysis", {"prometheus": {"address": "http://p:9090"}}),
            _experiment(
                variants=_variants(("fp32", "fp32", 45), ("int8", "int8", 45)),
                durationSeconds=None,
                minRequests=500,
                prometheus=None,
                shadowPercent=20,
                recommend={
                    "objective": "cheapest",
                    "maxP95LatencyMs": 50,
                    "minOutputAgreement": {"cosine": 0.99},
                    "errorRateNotWorse": False,
                },
                hardSlo={"maxErrorRate": 0.2},
            ),
        ),
    ),
]


def _samples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(REPO.glob("samples/**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "TrtEngine":
                out.append((f"{path.relative_to(REPO)}:{doc['metadata']['name']}", doc))
    return out


def _body(mutate: Mutate) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    mutate(body)
    return body


def _model_accepts(body: dict[str, Any]) -> bool:
    try:
        TrtEngineSpec.model_validate(body["spec"])
    except ValidationError:
        return False
    return True


ALL = [(what, _body(m), False) for what, m in REFUSED] + [
    (what, _body(m), True) for what, m in ACCEPTED
]
ALL += [(what, doc, True) for what, doc in _samples()]


@pytest.mark.parametrize(("what", "body", "accepted"), ALL, ids=[c[0] for c in ALL])
def test_models_give_the_expected_verdict(what: str, body: dict[str, Any], accepted: bool) -> None:
    assert _model_accepts(body) is accepted, what


def test_the_crd_offers_the_calibration_methods_the_worker_has() -> None:
    crd = yaml.safe_load((REPO / "crds" / "trtops.dev_trtengines.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    method = spec["properties"]["build"]["properties"]["calibration"]["properties"]["method"]
    assert tuple(method["enum"]) == MODELOPT_CALIBRATION_METHODS


@pytest.mark.cluster
@pytest.mark.usefixtures("trtengine_crd")
@pytest.mark.parametrize(("what", "body", "accepted"), ALL, ids=[c[0] for c in ALL])
def test_api_server_and_models_agree(
    k8s_api: Any, namespace: str, what: str, body: dict[str, Any], accepted: bool
) -> None:
    from kubernetes import client

    body = copy.deepcopy(body)
    body["metadata"] = {"name": "drift"}
    try:
        created = client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
            "trtops.dev", "v1alpha1", namespace, "trtengines", body,
            dry_run="All", field_validation="Strict",
        )  # fmt: skip
        api_accepts = True
    except client.ApiException as exc:
        status = exc.status
        api_accepts, created = False, None
    else:
        status = 201
    assert status in (201, 400, 422), status  # a refusal, not an outage
    assert (api_accepts, _model_accepts(body)) == (accepted, accepted), what
    if created is not None:  # the defaults the API server filled in read the same in the models
        assert TrtEngineSpec.model_validate(created["spec"]) == TrtEngineSpec.model_validate(
            body["spec"]
        )


def test_the_status_models_and_the_crd_status_schema_name_the_same_fields() -> None:
    from trtops_operator.results import PLAN_FIELDS
    from trtops_operator.status_model import STATUS_KEYS, EngineStatus, PlanRecord, StableStatus

    crd = yaml.safe_load((REPO / "crds" / "trtops.dev_trtengines.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    props = status["properties"]

    def aliases(model: Any) -> set[str]:
        return {f.alias or n for n, f in model.model_fields.items()}

    assert aliases(EngineStatus) == set(props) >= set(STATUS_KEYS)
    assert aliases(StableStatus) == set(props["stable"]["properties"])
    plan = set(props["plans"]["items"]["properties"])
    # Every plan field the operator or the worker writes has a place in the schema.
    assert aliases(PlanRecord) | {*PLAN_FIELDS, "artifactKey"} <= plan
