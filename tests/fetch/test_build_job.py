"""Remote model URIs in the operator: the typed spec admits them (https only with a pin), the build
Job gets a ``fetch`` init container that alone sees the credentials, the build reads the fetched
files, and a fetch failure reaches status with its own reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from trtops_operator import keys
from trtops_operator.config import OperatorConfig
from trtops_operator.manifests import Engine, render_build_job
from trtops_operator.models import TrtEngineSpec
from trtops_operator.observation import summarize_pod
from trtops_operator.reconcile import JobObs, Observed, decide

CONFIG = OperatorConfig(worker_image="w:1")
PIN = "a" * 64


def spec(**model: Any) -> dict[str, Any]:
    return {
        "model": model,
        "build": {
            "precision": "int8",
            "calibration": {"uri": "hf://acme/calib@v2/data/calib.npz"},
            "accuracy": {
                "validation": {"uri": "https://data.example/val.npz", "sha256": "b" * 64},
                "minTop1Agreement": 0.9,
            },
        },
        "serving": {"backend": "onnxruntime"},
        "storage": {"claimName": "plans"},
    }


def job(body: dict[str, Any]) -> dict[str, Any]:
    engine = Engine("e", "ns", "u1", TrtEngineSpec.model_validate(body))
    return render_build_job(engine, None, "k" * 64, name="trt-build-x", config=CONFIG)


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_remote_inputs_are_fetched_by_an_init_container_before_the_build() -> None:
    pod = job(spec(uri="s3://models/resnet/model.onnx", sha256=PIN, credentialsSecret="s3-creds"))
    pod = pod["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    build = pod["containers"][0]
    gets = [init["args"][i + 1 : i + 5] for i, a in enumerate(init["args"]) if a == "--get"]
    assert gets == [
        ["model", "s3://models/resnet/model.onnx", f"/plans/sources/sha256/{PIN}/model.onnx", PIN],
        ["calibration", "hf://acme/calib@v2/data/calib.npz", gets[1][2], "-"],
        ["validation", "https://data.example/val.npz", gets[2][2], "b" * 64],
    ]
    # The build reads exactly what the fetch wrote, on the same claim mount.
    assert arg(build["args"], "--model") == gets[0][2]
    assert arg(build["args"], "--calibration") == gets[1][2]
    assert gets[1][2].endswith("/calib.npz")  # the loader tells .npz from .npy by the name
    assert arg(build["args"], "--validation") == gets[2][2]
    assert init["volumeMounts"] == build["volumeMounts"]
    assert init["securityContext"] == build["securityContext"]
    # Only the fetch container sees the Secret, and never as a literal value.
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "envFrom" not in build
    assert not any("secretKeyRef" in json.dumps(e) for e in build["env"])


def test_gs_credentials_are_a_mounted_key_file_for_the_fetch_only() -> None:
    pod = job(spec(uri="gs://models/m.onnx", credentialsSecret="gcs"))["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"].endswith("/gcs-credentials.json")
    assert {"name": "source-credentials", "secret": {"secretName": "gcs"}} in pod["volumes"]
    assert not any(m["name"] == "source-credentials" for m in pod["containers"][0]["volumeMounts"])


def test_claim_only_specs_have_no_init_container() -> None:
    body = spec(uri="models/m.onnx")
    body["build"] = {"precision": "fp16"}
    assert "initContainers" not in job(body)["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"uri": "https://h.example/m.onnx"}, "spec.model.sha256 is required"),
        ({"uri": "https://user:pw@h.example/m.onnx", "sha256": PIN}, "should match pattern"),
        ({"uri": "ftp://h.example/m.onnx"}, "should match pattern"),
        ({"uri": "s3://Bad_Bucket/m.onnx"}, "should match pattern"),
    ],
)
def test_spec_refuses_unpinned_https_and_unknown_stores(
    model: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        TrtEngineSpec.model_validate(spec(**model))


def pod_status_fetch_failed(result: dict[str, Any]) -> dict[str, Any]:
    """A build pod as the API server shows it after its fetch init container failed."""
    return {
        "metadata": {
            "name": "trt-build-x-abcde",
            "labels": {"batch.kubernetes.io/job-name": "J"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [
                {
                    "name": "fetch",
                    "state": {"terminated": {"exitCode": 10, "message": json.dumps(result)}},
                }
            ],
            "containerStatuses": [
                {"name": "build", "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }


@pytest.mark.parametrize("reason", ["ModelNotFound", "ModelAccessDenied", "ModelDigestMismatch"])
def test_a_failed_fetch_is_the_builds_failure_reason_in_status(reason: str) -> None:
    body = spec(uri="s3://models/m.onnx", sha256=PIN, credentialsSecret="s3-creds")
    typed = TrtEngineSpec.model_validate(body)
    name = keys.job_name(keys.build_key(typed, None, "w:1"), "plans", keys.gate_json(typed))
    result = {
        "ok": False,
        "category": "model",
        "reason": reason,
        "message": "model s3://models/m.onnx: x",
    }
    raw = pod_status_fetch_failed(result)
    raw["metadata"]["labels"]["batch.kubernetes.io/job-name"] = name
    obs = Observed(
        jobs={name: JobObs(name, ("u1",), failed=True, failure_reason="BackoffLimitExceeded")},
        pods={name: [summarize_pod(raw)]},
    )
    resource = {
        "metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": body,
        "status": {},
    }
    d = decide(resource, obs, CONFIG, "2026-01-01T00:00:00Z")
    built = next(c for c in d.status["conditions"] if c["type"] == "Built")
    assert (built["status"], built["reason"]) == ("False", reason)
    assert "s3://models/m.onnx" in built["message"]
