"""The API server admits object-store URIs and refuses an unpinned or credential-carrying https://
URI with a message naming the field (the CRD's pattern and CEL rules)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd")]
PIN = "c" * 64


def engine(model: dict[str, Any], calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    build: dict[str, Any] = {"precision": "fp32"}
    if calibration:
        build = {"precision": "int8", "calibration": calibration}
    return {
        "apiVersion": "trtops.dev/v1alpha1",
        "kind": "TrtEngine",
        "metadata": {"name": "remote"},
        "spec": {
            "model": model,
            "build": build,
            "serving": {"backend": "onnxruntime"},
            "storage": {"claimName": "plans"},
        },
    }


def server_dry_run(namespace: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "create", "--dry-run=server", "-n", namespace, "-f", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "model",
    [
        {"uri": "s3://models/resnet/model.onnx", "credentialsSecret": "s3-creds"},
        {"uri": "gs://models.example/m.onnx"},
        {"uri": "hf://acme/resnet@v1.2/model.onnx"},
        {"uri": "https://models.example/m.onnx?X-Amz-Signature=abc", "sha256": PIN},
    ],
)
def test_remote_uris_are_admitted(namespace: str, model: dict[str, Any]) -> None:
    proc = server_dry_run(namespace, engine(model))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (engine({"uri": "https://models.example/m.onnx"}), "spec.model.sha256 is required"),
        (
            engine({"uri": "m.onnx"}, {"uri": "https://data.example/c.npz"}),
            "spec.build.calibration.sha256 is required",
        ),
        (engine({"uri": "https://u:p@models.example/m.onnx", "sha256": PIN}), "spec.model.uri"),
        (engine({"uri": "ftp://models.example/m.onnx"}), "spec.model.uri"),
    ],
)
def test_bad_remote_uris_are_refused_naming_the_field(
    namespace: str, body: dict[str, Any], message: str
) -> None:
    proc = server_dry_run(namespace, body)
    assert proc.returncode != 0
    assert message in proc.stderr
