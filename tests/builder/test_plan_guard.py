"""The serving pod refuses a plan built for another TensorRT or GPU, before TensorRT reads it,
and says why in its termination message (no CPU fallback: the operator builds a plan for it).

TensorRT and a GPU cannot run here, so the pod's side is the one stand-in: ``environment`` (the
two-line TensorRT/CUDA probe, checked by name in test_tensorrt_api) is replaced by the target
an H200 pod with TensorRT 11.2 would report. Everything else is the real ``trtops-worker serve``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from trtops_worker.cli import main
from trtops_worker.serve import backend_tensorrt
from trtops_worker.serve.backend_tensorrt import (
    PlanIncompatible,
    PlanTarget,
    check_plan,
    recorded_target,
)

from tests.builder.conftest import SampleModel

POD = PlanTarget("11.2.1.2", "9.0", "NVIDIA H200")


def _plan_folder(folder: Path, conv: SampleModel, version: str, capability: str) -> Path:
    """A build folder as the TensorRT backend writes it (metadata fields the guard reads)."""
    folder.mkdir()
    (folder / "engine.plan").write_bytes(b"a plan TensorRT must never be asked to read")
    shutil.copy(conv.model, folder / "converted.onnx")
    metadata = {
        "backend": "tensorrt",
        "precision": "fp16",
        "artifact": "engine.plan",
        "converted_onnx": "converted.onnx",
        "versions": {"tensorrt": version, "trtops": "0.1.0"},
        "device": {"kind": "gpu", "computeCapability": capability, "gpuProduct": "NVIDIA-A10"},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.mark.parametrize(
    ("plan", "compatible"),
    [
        (PlanTarget("11.2.1.2", "9.0"), True),
        (PlanTarget("11.2.1.7", "9.0"), True),  # another build number of the same release
        (PlanTarget("11.4.0.106", "9.0"), False),
        (PlanTarget("10.13.3.9", "9.0"), False),
        (PlanTarget("11.2.1.2", "8.6"), False),
        (None, True),  # nothing recorded (a plan given with --model): TensorRT decides
    ],
)
def test_check_plan(plan: PlanTarget | None, compatible: bool) -> None:
    if compatible:
        check_plan(plan, POD)
    else:
        with pytest.raises(PlanIncompatible):
            check_plan(plan, POD)


def test_the_target_is_read_from_the_build_metadata(conv: SampleModel, tmp_path: Path) -> None:
    folder = _plan_folder(tmp_path / "key", conv, "11.2.1.2", "8.6")
    assert recorded_target(folder / "engine.plan") == PlanTarget("11.2.1.2", "8.6", "NVIDIA-A10")
    (folder / "metadata.json").write_text("{not json")
    assert recorded_target(folder / "engine.plan") is None


def _serve(
    folder: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> tuple[int, dict[str, object]]:
    """``trtops-worker serve --artifact-dir folder`` on the H200 pod: exit code, its result."""
    log = folder.parent / "termination-log"
    monkeypatch.setenv("TRTOPS_TERMINATION_LOG", str(log))
    monkeypatch.setattr(backend_tensorrt, "environment", lambda: POD)
    argv = ["serve", "--artifact-dir", str(folder), "--model-name", "m", "--front-ends", "1"]
    code = main([*argv, *extra])
    return code, json.loads(log.read_text())


def test_serving_a_plan_for_another_gpu_exits_with_plan_incompatible(
    conv: SampleModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _plan_folder(tmp_path / "key", conv, "11.2.1.2", "8.6")
    # Even with the CPU fallback on: serving on the CPU would hide the cause.
    code, result = _serve(folder, monkeypatch, "--cpu-fallback")
    assert code == 1
    assert (result["ok"], result["reason"]) == (False, "PlanIncompatible")
    assert result["message"] == (
        "the plan was built with TensorRT 11.2.1.2 for compute capability 8.6 (NVIDIA-A10);"
        " this pod has TensorRT 11.2.1.2 on compute capability 9.0 (NVIDIA H200): it needs a"
        " plan built for this GPU and TensorRT"
    )
    assert result["pod"] == {
        "tensorrtVersion": "11.2.1.2",
        "computeCapability": "9.0",
        "gpu": "NVIDIA H200",
    }
    assert result["plan"] == {
        "tensorrtVersion": "11.2.1.2",
        "computeCapability": "8.6",
        "gpu": "NVIDIA-A10",
    }


def test_a_plan_from_another_tensorrt_is_refused_too(
    conv: SampleModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _plan_folder(tmp_path / "key", conv, "10.13.3.9", "9.0")
    code, result = _serve(folder, monkeypatch)
    assert (code, result["reason"]) == (1, "PlanIncompatible")
    assert "built with TensorRT 10.13.3.9" in str(result["message"])


# --- the operator's side: the refusal becomes Ready=False, reason PlanIncompatible ------------

SPEC = {
    "model": {"uri": "m.onnx"},
    "build": {"targets": [{"gpuProduct": "H100"}]},
    "storage": {"claimName": "c"},
}


def _engine() -> dict[str, object]:
    return {
        "metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": SPEC,
    }


def _serving_pod(revision: str, message: str) -> dict[str, object]:
    """A crash-looping serving pod as the kubelet reports it: the refusal under lastState."""
    return {
        "metadata": {
            "name": "e-abc-h100-7f9c",
            "labels": {
                "trtops.dev/engine": "e",
                "trtops.dev/revision": revision,
                "trtops.dev/target": "H100",
                "trtops.dev/component": "serve",
            },
        },
        "status": {
            "containerStatuses": [
                {
                    "name": "serve",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": message}},
                }
            ]
        },
    }


def test_the_operator_turns_the_refusal_into_ready_false_plan_incompatible(
    conv: SampleModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtops_operator import keys
    from trtops_operator.config import OperatorConfig
    from trtops_operator.models import TrtEngineSpec
    from trtops_operator.observation import summarize_serving_pod
    from trtops_operator.reconcile import JobObs, Observed, PodObs, decide

    # The worker's real termination message, as the serving pod wrote it.
    _serve(_plan_folder(tmp_path / "key", conv, "11.2.1.2", "8.6"), monkeypatch)
    message = (tmp_path / "termination-log").read_text()

    config = OperatorConfig(worker_image="w:1")
    spec = TrtEngineSpec.model_validate(SPEC)
    job = keys.job_name(keys.build_key(spec, "H100", config.worker_image), "c", None)
    built = {"ok": True, "key": "k" * 64, "path": "/plans/k", "sha256": "s" * 64}
    observed = Observed(
        jobs={job: JobObs(job, ("u1",), succeeded=True)},
        pods={job: [PodObs("b", job, "t", "Succeeded", json.dumps(built))]},
    )
    now = "2026-01-01T00:00:00Z"
    first = decide(_engine(), observed, config, now)
    revision = first.status["revision"]
    conditions = {c["type"]: c for c in first.status["conditions"]}
    assert conditions["Ready"]["reason"] == "Starting"

    pods = [summarize_serving_pod(_serving_pod(revision, message))]
    assert pods[0].incompatible is not None
    d = decide(_engine(), dataclasses.replace(observed, serving_pods=pods), config, now)
    conditions = {c["type"]: c for c in d.status["conditions"]}
    ready, degraded = conditions["Ready"], conditions["Degraded"]
    assert (ready["status"], ready["reason"]) == ("False", "PlanIncompatible")
    assert ready["message"].startswith(
        f"pod e-abc-h100-7f9c (H100, revision {revision}) refused its plan: the plan was built"
        " with TensorRT 11.2.1.2 for compute capability 8.6"
    )
    assert (degraded["status"], degraded["reason"]) == ("True", "PlanIncompatible")


def test_other_serving_failures_are_not_taken_for_plan_incompatible() -> None:
    from trtops_operator.observation import summarize_serving_pod

    other = json.dumps({"ok": False, "category": "backend", "reason": "BackendLoadFailed"})
    assert summarize_serving_pod(_serving_pod("r", other)).incompatible is None
    assert summarize_serving_pod(_serving_pod("r", "Traceback ...")).incompatible is None


# --- ...and pins the GPU product to the pod's compute capability, once ----------------------


def _refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: PlanTarget, pod: PlanTarget
) -> str:
    """The termination message the serving pod writes for this pair (the worker's own code)."""
    from trtops_worker.serve.cli import _write_termination_message

    log = tmp_path / f"refusal-{plan.compute_capability}-{pod.compute_capability}"
    monkeypatch.setenv("TRTOPS_TERMINATION_LOG", str(log))
    _write_termination_message(PlanIncompatible(plan, pod))
    return log.read_text()


def _reconcile(status: dict[str, object], pods: list[str], revision: str, jobs: dict) -> object:
    from trtops_operator.config import OperatorConfig
    from trtops_operator.observation import summarize_serving_pod
    from trtops_operator.reconcile import JobObs, Observed, PodObs, decide

    built = {"ok": True, "key": "k" * 64, "path": "/plans/k", "sha256": "s" * 64}
    observed = Observed(
        jobs={j: JobObs(j, ("u1",), succeeded=True) for j in jobs},
        pods={j: [PodObs("b", j, "t", "Succeeded", json.dumps(built))] for j in jobs},
        serving_pods=[summarize_serving_pod(_serving_pod(revision, m)) for m in pods],
    )
    body = {**_engine(), "status": status}
    return decide(body, observed, OperatorConfig(worker_image="w:1"), "2026-01-01T00:00:00Z")


def test_a_plan_for_the_pods_gpu_is_built_and_served_there_and_never_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtops_operator import keys
    from trtops_operator.models import TrtEngineSpec

    spec = TrtEngineSpec.model_validate(SPEC)
    unpinned = keys.job_name(keys.build_key(spec, "H100", "w:1"), "c", None)
    pinned = keys.job_name(keys.build_key(spec, "H100", "w:1", "9.0"), "c", None)
    first = _reconcile({}, [], "", {unpinned: 1})
    r0 = first.status["revision"]
    refused = _refusal(tmp_path, monkeypatch, PlanTarget("11.2.1.2", "8.6"), POD)

    # R0's pod refused its 8.6 plan on a 9.0 GPU: pin H100 to 9.0, build there.
    d = _reconcile(first.status, [refused], r0, {unpinned: 1})
    assert d.status["computeCapabilityPins"] == {"H100": "9.0"}
    assert [j["metadata"]["name"] for j in d.create] == [pinned]
    selector = d.create[0]["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {
        "nvidia.com/gpu.product": "H100",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
    }
    assert any(e.reason == "PlanIncompatible" and e.type == "Warning" for e in d.events)
    r1 = d.status["revision"]
    assert r1 != r0

    # The pinned plan is built: its Deployment serves on 9.0 GPUs only.
    built = _reconcile(d.status, [], r1, {pinned: 1})
    deployment = next(o for o in built.apply if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == selector

    # Refused again (a pod on an 8.0 GPU slipped in, say): reported, never rebuilt.
    again = _refusal(
        tmp_path, monkeypatch, PlanTarget("11.2.1.2", "9.0"), PlanTarget("11.2.1.2", "8.0")
    )
    d2 = _reconcile(built.status, [again], r1, {pinned: 1})
    assert d2.status["computeCapabilityPins"] == {"H100": "9.0"}
    assert not d2.create
    assert d2.status["revision"] == r1
    ready = next(c for c in d2.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "PlanIncompatible"


def test_another_tensorrt_release_is_reported_not_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtops_operator import keys
    from trtops_operator.models import TrtEngineSpec

    spec = TrtEngineSpec.model_validate(SPEC)
    job = keys.job_name(keys.build_key(spec, "H100", "w:1"), "c", None)
    first = _reconcile({}, [], "", {job: 1})
    refused = _refusal(tmp_path, monkeypatch, PlanTarget("10.13.3.9", "9.0"), POD)
    d = _reconcile(first.status, [refused], first.status["revision"], {job: 1})
    assert "computeCapabilityPins" not in d.status
    assert not d.create
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PlanIncompatible")


@pytest.mark.cluster
@pytest.mark.usefixtures("trtengine_crd")
def test_the_api_server_keeps_the_pins_in_status(k8s_api: object, namespace: str) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api)
    body = {"apiVersion": "trtops.dev/v1alpha1", "kind": "TrtEngine", **_engine()}
    body["metadata"] = {"name": "e"}
    api.create_namespaced_custom_object("trtops.dev", "v1alpha1", namespace, "trtengines", body)

    def patch(pins: dict[str, str]) -> object:
        return api.patch_namespaced_custom_object_status(
            "trtops.dev", "v1alpha1", namespace, "trtengines", "e",
            {"status": {"computeCapabilityPins": pins}},
        )  # fmt: skip

    assert patch({"H100": "9.0"})["status"]["computeCapabilityPins"] == {"H100": "9.0"}
    with pytest.raises(client.ApiException) as refused:
        patch({"H100": "Hopper"})
    assert "computeCapabilityPins" in json.loads(refused.value.body)["message"]
