"""Readiness, graceful shutdown and CPU fallback of the real ``serve`` process."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from .conftest import conv_input, infer_body, start_server


def test_sigterm_turns_unready_finishes_every_request_in_flight_and_exits_0(
    model_dir: Path, tmp_path: Path
) -> None:
    s = start_server(
        tmp_path,
        "--model",
        str(model_dir / "slow.onnx"),
        "--model-name",
        "slow",
        "--max-batch-size",
        "4",
        "--max-queue-size",
        "64",
        "--drain-seconds",
        "3",
    )
    body = infer_body(np.zeros((1, 3, 64, 64), np.float32))

    def send(_: int) -> int:
        return requests.post(s.infer_url("slow"), json=body, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        burst = [pool.submit(send, i) for i in range(32)]
        deadline = time.monotonic() + 10
        while s.metric("trtops_inflight_requests") < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        s.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert requests.get(f"{s.url}/v2/health/ready", timeout=5).status_code == 400
        assert requests.get(f"{s.url}/v2/health/live", timeout=5).status_code == 200
        codes = [f.result() for f in burst]
    assert codes == [200] * 32
    assert s.process.wait(30) == 0
    assert "stopped" in s.output()


def test_tensorrt_that_cannot_load_falls_back_to_onnxruntime(
    model_dir: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan; on this machine `import tensorrt` fails before reading it")
    s = start_server(
        tmp_path,
        "--model",
        str(plan),
        "--backend",
        "tensorrt",
        "--cpu-fallback",
        "--fallback-model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--revision",
        "r7",
        "--precision",
        "fp16",
    )
    try:
        meta = requests.get(f"{s.url}/v2/models/conv", timeout=5).json()
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["parameters"]["fallback"] is True
        assert meta["parameters"]["requested_backend"] == "tensorrt"
        assert "TensorRT backend failed to load" in meta["parameters"]["fallback_reason"]
        x = conv_input(1)
        assert requests.post(s.infer_url(), json=infer_body(x), timeout=10).status_code == 200
        labels = {"model": "conv", "revision": "r7", "precision": "fp16", "backend": "onnxruntime"}
        assert s.metric("trtops_backend_fallback", **labels) == 1
        assert s.metric("trtops_requests_total", outcome="success", **labels) == 1
        assert "falling back to ONNX Runtime" in s.output()
    finally:
        assert s.stop() == 0


def test_tensorrt_that_cannot_load_without_fallback_exits_non_zero(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"x")
    s = start_server(
        tmp_path,
        "--model",
        str(plan),
        "--backend",
        "tensorrt",
        "--model-name",
        "m",
        wait_ready=False,
    )
    assert s.process.wait(60) == 1
    assert "cannot load" in s.output()


def test_artifact_dir_metadata_drives_backend_precision_and_fallback(
    model_dir: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "key"
    artifact.mkdir()
    (artifact / "model.plan").write_bytes(b"x")
    (artifact / "model.fp16.onnx").write_bytes((model_dir / "conv.onnx").read_bytes())
    spec = [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    (artifact / "metadata.json").write_text(
        json.dumps(
            {
                "backend": "tensorrt",
                "precision": "fp16",
                "artifact": "model.plan",
                "converted_onnx": "model.fp16.onnx",
                "inputs": spec,
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
            }
        )
    )
    s = start_server(
        tmp_path, "--artifact-dir", str(artifact), "--cpu-fallback", "--model-name", "conv"
    )
    try:
        meta = requests.get(f"{s.url}/v2/models/conv", timeout=5).json()
        assert meta["parameters"]["precision"] == "fp16"
        assert meta["parameters"]["fallback"] is True
        assert meta["inputs"] == spec
    finally:
        assert s.stop() == 0
