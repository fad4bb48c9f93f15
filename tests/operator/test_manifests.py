"""Builders against golden YAML (regenerate with TRTOPS_REGEN_GOLDEN=1 and review the diff)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from trtops_operator import keys, manifests
from trtops_operator.config import OperatorConfig
from trtops_operator.models import Toleration, TrtEngineSpec

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
GOLDEN = Path(__file__).parent / "golden"
CONFIG = OperatorConfig(worker_image="registry.example/trtops-worker:test")


def engine(sample: str) -> manifests.Engine:
    doc = yaml.safe_load((SAMPLES / sample).read_text())
    return manifests.Engine(
        name=doc["metadata"]["name"],
        namespace="ml",
        uid="uid-1",
        spec=TrtEngineSpec.model_validate(doc["spec"]),
    )


def check_golden(name: str, obj: dict[str, Any]) -> None:
    path = GOLDEN / name
    text = yaml.safe_dump(obj, sort_keys=False)
    if os.environ.get("TRTOPS_REGEN_GOLDEN"):
        path.write_text(text)
    assert yaml.safe_load(path.read_text()) == obj, (
        f"{name} differs from golden; regenerate and review"
    )


def gpu_objects() -> dict[str, dict[str, Any]]:
    e = engine("resnet-int8.yaml")
    product = "NVIDIA-H100-80GB-HBM3"
    key = keys.build_key(e.spec, product, CONFIG.worker_image)
    job = keys.job_name(key, e.spec.storage.claim_name, keys.gate_json(e.spec))
    plan = manifests.PlanRef(
        target=product, key=key, path=f"/plans/{'a' * 64}", precision="int8", backend="tensorrt"
    )
    return {
        "resnet-job.yaml": manifests.render_build_job(e, product, key, name=job, config=CONFIG),
        "resnet-deployment.yaml": manifests.render_deployment(
            e, plan, name=keys.serving_name(e.name, product), revision="r1", config=CONFIG
        ),
        "resnet-service.yaml": manifests.render_service(e),
        "resnet-pdb.yaml": manifests.render_pdb(e),
    }


@pytest.mark.parametrize(
    "name", ["resnet-job.yaml", "resnet-deployment.yaml", "resnet-service.yaml", "resnet-pdb.yaml"]
)
def test_gpu_objects_match_golden(name: str) -> None:
    check_golden(name, gpu_objects()[name])


def test_cpu_job_and_deployment_match_golden_and_ask_for_no_gpu() -> None:
    e = engine("cpu-fp32.yaml")
    key = keys.build_key(e.spec, None, CONFIG.worker_image)
    job = manifests.render_build_job(
        e, None, key, name=keys.job_name(key, "trt-plans", None), config=CONFIG
    )
    plan = manifests.PlanRef(
        target=None, key=key, path="/plans/x", precision="fp32", backend="onnxruntime"
    )
    dep = manifests.render_deployment(
        e, plan, name=keys.serving_name(e.name, None), revision="r1", config=CONFIG
    )
    check_golden("cpu-job.yaml", job)
    check_golden("cpu-deployment.yaml", dep)
    for obj in (job, dep):
        pod = obj["spec"]["template"]["spec"]
        assert "nodeSelector" not in pod
        assert "tolerations" not in pod
        assert "nvidia.com/gpu" not in yaml.safe_dump(pod["containers"][0]["resources"])


def test_job_command_line_follows_the_worker_contract() -> None:
    job = gpu_objects()["resnet-job.yaml"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["trtops-worker"]
    assert args[0] == "build"
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    # The model sits on another claim than the plans: mounted read-only under /mnt/claims.
    assert flags["--model"] == "/mnt/claims/models/resnet50/model.onnx"
    assert flags["--storage"] == "/plans"
    assert flags["--profile"] == "input:1x3x224x224:8x3x224x224:32x3x224x224"
    assert flags["--calibration-method"] == "entropy"
    assert flags["--calibration-max-samples"] == "512"
    assert flags["--gpu-product"] == "NVIDIA-H100-80GB-HBM3"
    assert flags["--min-top1-agreement"] == "0.99"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_relative_uri_and_same_claim_uri_resolve_onto_the_storage_mount() -> None:
    assert manifests.resolve_uri("models/m.onnx", "plans") == ("/plans/models/m.onnx", None)
    assert manifests.resolve_uri("pvc://plans/m.onnx", "plans") == ("/plans/m.onnx", None)
    assert manifests.resolve_uri("pvc://data/m.onnx", "plans") == (
        "/mnt/claims/data/m.onnx",
        "data",
    )


def test_serving_is_pinned_to_the_plans_gpu_with_read_only_plans() -> None:
    dep = gpu_objects()["resnet-deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["containers"][0]["volumeMounts"][0] == {
        "name": "plans",
        "mountPath": "/plans",
        "readOnly": True,
    }
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    # One Deployment per revision: the revision is in the selector, so stable and canary
    # Deployments never claim each other's pods; the plan key is not (a label, not identity).
    assert set(dep["spec"]["selector"]["matchLabels"]) == {
        "trtops.dev/engine",
        "trtops.dev/component",
        "trtops.dev/target",
        "trtops.dev/revision",
    }


def test_hash_annotation_changes_with_the_object() -> None:
    e = engine("cpu-fp32.yaml")
    plan = manifests.PlanRef(
        target=None, key="k", path="/plans/x", precision="fp32", backend="onnxruntime"
    )
    a = manifests.render_deployment(e, plan, name="n", revision="r1", config=CONFIG)
    b = manifests.render_deployment(e, plan, name="n", revision="r2", config=CONFIG)
    h = manifests.HASH_ANNOTATION
    assert a["metadata"]["annotations"][h] != b["metadata"]["annotations"][h]
    assert a == manifests.render_deployment(e, plan, name="n", revision="r1", config=CONFIG)


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TEAM_TAINT = {"key": "dedicated", "value": "ml-gpu", "effect": "NoSchedule"}
DRAIN = {"key": "node.example/draining", "operator": "Exists", "effect": "NoExecute"}


def with_tolerations(
    e: manifests.Engine,
    build: list[dict[str, Any]] | None = None,
    serving: list[dict[str, Any]] | None = None,
) -> manifests.Engine:
    """``e`` with the given build and serving tolerations (as a user writes them)."""
    spec = e.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if build is not None:
        spec["build"]["tolerations"] = build
    if serving is not None:
        spec["serving"]["tolerations"] = serving
    return manifests.Engine(e.name, e.namespace, e.uid, TrtEngineSpec.model_validate(spec))


def gpu_job_and_deployment(e: manifests.Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    product = "NVIDIA-H100-80GB-HBM3"
    key = keys.build_key(e.spec, product, CONFIG.worker_image)
    job = keys.job_name(key, e.spec.storage.claim_name, keys.gate_json(e.spec))
    plan = manifests.PlanRef(
        target=product, key=key, path="/plans/p", precision="int8", backend="tensorrt"
    )
    return (
        manifests.render_build_job(e, product, key, name=job, config=CONFIG),
        manifests.render_deployment(e, plan, name="n", revision="r1", config=CONFIG),
    )


def pod_tolerations(obj: dict[str, Any]) -> Any:
    return obj["spec"]["template"]["spec"].get("tolerations")


def test_tolerations_follow_the_gpu_one_in_each_pod_spec_as_written() -> None:
    # An unset operator stays unset (Kubernetes reads it as Equal): applying it back shows no diff.
    e = with_tolerations(
        engine("resnet-int8.yaml"),
        build=[TEAM_TAINT],
        serving=[TEAM_TAINT, {**DRAIN, "tolerationSeconds": 300}],
    )
    job, dep = gpu_job_and_deployment(e)
    assert pod_tolerations(job) == [GPU_TOLERATION, TEAM_TAINT]
    assert pod_tolerations(dep) == [GPU_TOLERATION, TEAM_TAINT, {**DRAIN, "tolerationSeconds": 300}]


def test_a_repeat_of_the_gpu_toleration_is_listed_once() -> None:
    e = with_tolerations(engine("resnet-int8.yaml"), build=[GPU_TOLERATION, TEAM_TAINT])
    job, _ = gpu_job_and_deployment(e)
    assert pod_tolerations(job) == [GPU_TOLERATION, TEAM_TAINT]


def test_cpu_pods_get_only_the_spec_tolerations() -> None:
    e = with_tolerations(engine("cpu-fp32.yaml"), build=[DRAIN], serving=[TEAM_TAINT])
    key = keys.build_key(e.spec, None, CONFIG.worker_image)
    plan = manifests.PlanRef(
        target=None, key=key, path="/plans/x", precision="fp32", backend="onnxruntime"
    )
    job = manifests.render_build_job(e, None, key, name="j", config=CONFIG)
    dep = manifests.render_deployment(e, plan, name="n", revision="r1", config=CONFIG)
    assert pod_tolerations(job) == [DRAIN]
    assert pod_tolerations(dep) == [TEAM_TAINT]


def test_no_tolerations_in_the_spec_leave_the_pods_as_before() -> None:
    # [] is what a client that always sends the field writes: same objects, same hashes.
    base = engine("resnet-int8.yaml")
    assert gpu_job_and_deployment(with_tolerations(base, build=[], serving=[])) == (
        gpu_job_and_deployment(base)
    )
    assert pod_tolerations(gpu_job_and_deployment(base)[0]) == [GPU_TOLERATION]


def test_tolerations_never_change_the_build_identity() -> None:
    base = engine("resnet-int8.yaml")
    tolerant = with_tolerations(base, build=[TEAM_TAINT], serving=[DRAIN])
    for product in (None, "NVIDIA-H100-80GB-HBM3"):
        key = keys.build_key(tolerant.spec, product, CONFIG.worker_image)
        assert key == keys.build_key(base.spec, product, CONFIG.worker_image)
    base_job, base_dep = gpu_job_and_deployment(base)
    job, dep = gpu_job_and_deployment(tolerant)
    # Same build Job name (so no new Job, no rebuild) and the same plan key on the Deployment...
    assert job["metadata"]["name"] == base_job["metadata"]["name"]
    notes, base_notes = dep["metadata"]["annotations"], base_dep["metadata"]["annotations"]
    assert notes[manifests.KEY_ANNOTATION] == base_notes[manifests.KEY_ANNOTATION]
    # ...while the serving Deployment is rewritten, so its pods roll onto the new tolerations.
    assert notes[manifests.HASH_ANNOTATION] != base_notes[manifests.HASH_ANNOTATION]


@pytest.mark.parametrize(
    ("toleration", "refusal"),
    [
        ({"key": "k", "operator": "Exists", "value": "v"}, "drop value, or use operator Equal"),
        ({"key": "k", "value": "v", "tolerationSeconds": 60}, "set effect NoExecute"),
        (
            {"key": "k", "effect": "NoSchedule", "tolerationSeconds": 60},
            "set effect NoExecute",
        ),
        ({"value": "v"}, "set key, or set operator Exists"),
        ({"key": "", "operator": "Equal"}, "set key, or set operator Exists"),
        ({"key": "k", "operator": "In"}, "operator"),
        ({"key": "k", "effect": "NoEvict"}, "effect"),
        ({"key": "a/b/c"}, "key"),
        ({"key": "k", "value": "-v"}, "value"),
        ({"key": "k", "effect": "NoExecute", "tolerationSeconds": -1}, "tolerationSeconds"),
    ],
)
def test_nonsense_toleration_is_refused_like_the_crd_does(
    toleration: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(ValidationError, match=refusal):
        Toleration.model_validate(toleration)


@pytest.mark.parametrize(
    "toleration",
    [
        {"operator": "Exists"},  # tolerates every taint
        {"key": "", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0},
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"},
        {"key": "k", "operator": "Exists", "value": ""},
        {"key": "k", "value": ""},
    ],
)
def test_sensible_toleration_is_accepted(toleration: dict[str, Any]) -> None:
    assert Toleration.model_validate(toleration).pod_json() == toleration
