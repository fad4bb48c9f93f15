"""Decoding OIP v2 JSON requests: what is accepted, and every client mistake as InvalidInput."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from trtops_worker.serve.codec import (
    decode_json_request,
    decode_raw,
    encode_bytes_tensor,
    encode_json_response,
)
from trtops_worker.serve.errors import InvalidInput
from trtops_worker.serve.types import InferResponse, TensorSpec

SPECS = [TensorSpec("x", "FP32", (-1, 2))]
OUT = ["y"]


def body(**tensor: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4], **tensor}
        ]
    }


@pytest.mark.parametrize(
    "data", [[1, 2, 3, 4], [[1, 2], [3, 4]], [1.0, 2.0, 3.0, 4.0]], ids=["flat", "nested", "floats"]
)
def test_flat_and_nested_data_decode_to_the_same_array(data: list[Any]) -> None:
    request = decode_json_request(body(data=data), SPECS, OUT)
    np.testing.assert_array_equal(request.inputs["x"], np.array([[1, 2], [3, 4]], np.float32))
    assert request.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "JSON object"),
        ({}, "non-empty list"),
        (
            {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
            "unknown input",
        ),
        (body(datatype="INT64"), "datatype"),
        (body(datatype="fp32"), "datatype"),  # case-sensitive
        (body(shape=[4]), "shape"),
        (body(shape=[2, 3], data=[1] * 6), "shape"),
        (body(shape=[2, -2]), "shape"),
        (body(shape="2,2"), "shape"),
        (body(data=[1, 2, 3]), "data elements"),
        (body(data=[[1, 2], [3]]), "regular array"),
        (body(data=["a", "b", "c", "d"]), "FP32"),
        (body(data=[{"a": 1}] * 4), "FP32"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}]}, "no 'data'"),
        ({**body(), "id": 7}, "'id'"),
        ({**body(), "outputs": [{"name": "nope"}]}, "unknown output"),
        ({"inputs": [body()["inputs"][0], body()["inputs"][0]]}, "twice"),
    ],
)
def test_client_mistakes_are_invalid_input(payload: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_json_request(payload, SPECS, OUT)


def test_binary_extension_inputs_and_outputs() -> None:
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    payload = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 16},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    request = decode_json_request(payload, SPECS, OUT, x.tobytes())
    np.testing.assert_array_equal(request.inputs["x"], x)
    head, raw = encode_json_response(InferResponse("m", "1", {"y": x}), request.binary_outputs)
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert raw == x.tobytes()


def test_raw_data_of_the_wrong_length_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="bytes"):
        decode_raw(SPECS[0], "FP32", (2, 2), b"\0" * 15)


def test_bytes_tensors_reach_the_model_as_text() -> None:
    """ONNX string tensors take text: a ``bytes`` element would reach the model as "b'a'"."""
    spec = TensorSpec("s", "BYTES", (-1,))
    array = np.array([b"a", b"", "é".encode()], dtype=np.object_)
    decoded = decode_raw(spec, "BYTES", (3,), encode_bytes_tensor(array))
    assert decoded.tolist() == ["a", "", "é"]
    assert all(type(x) is str for x in decoded)
    with pytest.raises(InvalidInput):
        decode_raw(spec, "BYTES", (3,), encode_bytes_tensor(array)[:-1])
    bad = np.array([b"ok", b"\xff\xfe"], dtype=np.object_)
    with pytest.raises(InvalidInput, match="input 's': BYTES element 1 is not valid UTF-8"):
        decode_raw(spec, "BYTES", (2,), encode_bytes_tensor(bad))
