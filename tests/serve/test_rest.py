"""OIP v2 over HTTP against the real server: endpoints, client mistakes, off-the-shelf clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests

from .conftest import Server, conv_input, infer_body, start_server


def test_health_and_server_metadata(server: Server) -> None:
    assert requests.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    meta = requests.get(f"{server.url}/v2", timeout=5).json()
    assert meta["name"] == "trtops"
    assert "version" in meta
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("path", ["/v2/models/conv", "/v2/models/conv/versions/r1"])
def test_model_metadata_reports_real_tensors(server: Server, path: str) -> None:
    meta = requests.get(server.url + path, timeout=5).json()
    assert meta["name"] == "conv"
    assert meta["versions"] == ["r1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["fallback"] is False


@pytest.mark.parametrize("path", ["/v2/models/conv/ready", "/v2/models/conv/versions/r1/ready"])
def test_model_ready(server: Server, path: str) -> None:
    assert requests.get(server.url + path, timeout=5).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/other",
        "/v2/models/conv/versions/r2",
        "/v2/models/other/ready",
        "/v2/models/conv/versions/9/ready",
    ],
)
def test_unknown_model_or_version_is_404(server: Server, path: str) -> None:
    response = requests.get(server.url + path, timeout=5)
    assert response.status_code == 404
    assert "error" in response.json()


def reference(model_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "conv.onnx"), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"input": x})[0]
    return out


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("path", ["/v2/models/conv/infer", "/v2/models/conv/versions/r1/infer"])
def test_infer_returns_the_model_output_and_echoes_the_id(
    server: Server, model_dir: Path, nested: bool, path: str
) -> None:
    x = conv_input(2)
    body = infer_body(x, id="req-42")
    if nested:
        body["inputs"][0]["data"] = x.tolist()  # type: ignore[index]
    response = requests.post(server.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "req-42"
    assert result["model_name"] == "conv"
    (out,) = result["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("logits", "FP32", [2, 10])
    np.testing.assert_array_equal(
        np.array(out["data"], np.float32).reshape(2, 10), reference(model_dir, x)
    )


def bad(x: np.ndarray, **changes: Any) -> dict[str, Any]:
    body = infer_body(x)
    body["inputs"][0].update(changes)  # type: ignore[index]
    return body


X = conv_input(1)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"inputs": "x"}', 400),
        (bad(X, name="image"), 400),
        (bad(X, datatype="INT64"), 400),
        (bad(X, datatype="FP64"), 400),
        (bad(X, shape=[1, 3, 32]), 400),
        (bad(X, shape=[1, 3, 16, 64]), 400),
        (bad(X, shape=[2, 3, 32, 32]), 400),  # data length does not match the shape
        (bad(X, data=X.ravel().tolist()[:-1]), 400),
        (bad(X, data=["x"] * X.size), 400),
        ({**infer_body(X), "outputs": [{"name": "probabilities"}]}, 400),
    ],
)
def test_client_mistakes_get_4xx_with_an_error_body(
    server: Server, payload: Any, status: int
) -> None:
    kwargs = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
    response = requests.post(server.infer_url(), timeout=10, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)


def test_unknown_model_infer_is_404(server: Server) -> None:
    response = requests.post(server.infer_url("other"), json=infer_body(X), timeout=10)
    assert response.status_code == 404
    assert "other" in response.json()["error"]


def test_oversize_body_is_413_and_counted(server: Server) -> None:
    before = server.metric("trtops_requests_total", outcome="client_error")
    response = requests.post(server.infer_url(), data=b"[" + b"0," * 600_000 + b"0]", timeout=10)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    assert server.metric("trtops_requests_total", outcome="client_error") == before + 1
    assert requests.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200


def test_wrong_method_and_path(server: Server) -> None:
    assert requests.get(server.infer_url(), timeout=5).status_code == 405
    assert requests.get(f"{server.url}/v3", timeout=5).status_code == 404


def test_tritonclient_http_works_unchanged(server: Server, model_dir: Path) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert client.is_server_live()
    assert client.is_model_ready("conv")
    x = conv_input(3, seed=5)
    for binary in (True, False):  # Triton's binary extension (its default) and plain JSON
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(
            "conv",
            [tensor],
            request_id="t1",
            outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)],
        )
        assert result.get_response()["id"] == "t1"
        np.testing.assert_array_equal(result.as_numpy("logits"), reference(model_dir, x))
    client.close()


def test_bytes_inputs_for_a_string_model(model_dir: Path, tmp_path: Path) -> None:
    s = start_server(tmp_path, "--model", str(model_dir / "strings.onnx"), "--model-name", "echo")
    try:
        meta = requests.get(f"{s.url}/v2/models/echo", timeout=5).json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        body = {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "wörld"]}
            ]
        }
        response = requests.post(s.infer_url("echo"), json=body, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == ["hello", "wörld"]
        body["inputs"][0]["data"] = [1, 2]  # type: ignore[index]
        assert requests.post(s.infer_url("echo"), json=body, timeout=10).status_code == 400
    finally:
        assert s.stop() == 0
