"""Every OIP datatype exact on every wire: the conformance matrix.

datatype x wire x batching on/off x instances. Each cell sends concurrent requests (so the
batched servers merge them) holding edge values of every datatype (range ends, -0.0,
subnormals, NaN and infinities where the wire can carry them, non-ASCII and NUL in text) through
an Identity model, and compares every returned element, bit for bit, with ONNX Runtime run
directly on the same inputs. The wires are driven by NVIDIA's ``tritonclient`` (unchanged) and
by the project's own request encoders (``trtops_worker.bench.clients``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import requests
from trtops_worker.bench.clients import grpc_infer_request, http_infer_body
from trtops_worker.serve.backend_onnxruntime import OnnxRuntimeBackend
from trtops_worker.serve.codec import raw_bytes
from trtops_worker.serve.proto import pb, pb_grpc

from tests.support.worker import Server, start_server

from .models import NUMERIC_DATATYPES, TYPED_DATATYPES, identity_model

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")

BF16 = np.dtype(ml_dtypes.bfloat16)
CONFIGS = {
    "unbatched": ["--max-batch-size", "1"],
    "batched": ["--max-batch-size", "8", "--max-queue-delay-us", "50000"],
    "batched-2-instances": [
        "--max-batch-size",
        "8",
        "--max-queue-delay-us",
        "50000",
        "--instances",
        "2",
    ],
}
ROWS = (1, 2, 3, 1)  # one request per row count, sent at once


def _pool(datatype: str, *, text_wire: bool) -> list[Any]:
    """Edge values of ``datatype``; NaN and infinities only where the wire can carry them."""
    if datatype == "BOOL":
        return [True, False]
    if datatype == "BYTES":
        return ["a", "", "é", "日本語", "x\x00y", "b'a'"]
    dtype = BF16 if datatype == "BF16" else np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [info.min, info.max, 0, 1, info.max // 3]
    info = ml_dtypes.finfo(dtype)
    values = [info.max, -info.max, info.smallest_subnormal, -0.0, 0.0, 1 / 3, -2.5]
    if not text_wire:
        values += [np.nan, np.inf, -np.inf]
    return values


def sample(datatype: str, rows: int, seed: int, *, text_wire: bool) -> np.ndarray:
    """A ``[rows, 3]`` input as the model holds it (BF16 as bfloat16, BYTES as str objects)."""
    pool = _pool(datatype, text_wire=text_wire)
    picks = np.random.default_rng(seed).integers(0, len(pool), rows * 3)
    if datatype == "BYTES":
        out = np.empty(rows * 3, dtype=np.object_)
        out[:] = [pool[i] for i in picks]
        return out.reshape(rows, 3)
    dtype = BF16 if datatype == "BF16" else np.dtype(datatype.lower().replace("fp", "float"))
    values = [pool[i] for i in picks]
    if dtype.kind in "iub":
        return np.array(values, dtype=dtype).reshape(rows, 3)
    return np.array(values, dtype=np.float64).astype(dtype).reshape(rows, 3)


def canonical(datatype: str, array: np.ndarray) -> list[Any]:
    """Elements compared bit for bit (-0.0 is not 0.0; NaN equals its own bits)."""
    flat = np.asarray(array).reshape(-1)
    if datatype == "BYTES":
        return [x if isinstance(x, bytes) else str(x).encode() for x in flat]
    if datatype == "BF16":
        flat = flat.astype(np.float32).astype(BF16)  # tritonclient hands BF16 back as float32
    if flat.dtype.kind == "f" or flat.dtype == BF16:
        return flat.view(f"u{flat.dtype.itemsize}").tolist()
    return flat.tolist()


def for_tritonclient(datatype: str, array: np.ndarray) -> np.ndarray:
    """tritonclient takes BF16 as float32 and BYTES as bytes."""
    if datatype == "BF16":
        return array.astype(np.float32)
    if datatype == "BYTES":
        out = np.empty(array.shape, dtype=np.object_)
        out.reshape(-1)[:] = [s.encode() for s in array.reshape(-1)]
        return out
    return array


# -- wires: each sends one request and returns {output name: array} ------------------------

Inputs = dict[str, np.ndarray]
Answer = dict[str, np.ndarray]
Wire = Callable[[Server, list[Inputs]], list[Answer]]


def concurrently(send: Callable[[Server, Inputs], Answer]) -> Wire:
    def wire(server: Server, batch: list[Inputs]) -> list[Answer]:
        with ThreadPoolExecutor(len(batch)) as pool:
            return list(pool.map(lambda inputs: send(server, inputs), batch))

    return wire


def _datatype(name: str) -> str:
    return name.split("_", 1)[1]


def triton_http(server: Server, batch: list[Inputs], *, binary: bool) -> list[Answer]:
    """tritonclient.http runs on gevent: concurrent requests go through its own async_infer."""
    client = tritonhttp.InferenceServerClient(
        f"127.0.0.1:{server.http_port}", concurrency=len(batch)
    )
    pending = []
    for inputs in batch:
        tensors, outputs = [], []
        for name, array in inputs.items():
            d = _datatype(name)
            tensor = tritonhttp.InferInput(name, list(array.shape), d)
            # tritonclient sends BF16 only as binary data over HTTP
            data = for_tritonclient(d, array)
            tensor.set_data_from_numpy(data, binary_data=binary or d == "BF16")
            tensors.append(tensor)
            outputs.append(tritonhttp.InferRequestedOutput(f"y_{d}", binary_data=binary))
        pending.append(client.async_infer("m", tensors, outputs=outputs))
    results = [p.get_result() for p in pending]
    client.close()
    return [
        {f"y_{_datatype(n)}": r.as_numpy(f"y_{_datatype(n)}") for n in batch[0]} for r in results
    ]


def triton_grpc(server: Server, inputs: Inputs) -> dict[str, np.ndarray]:
    client = tritongrpc.InferenceServerClient(server.grpc)
    tensors = []
    for name, array in inputs.items():
        d = _datatype(name)
        tensor = tritongrpc.InferInput(name, list(array.shape), d)
        tensor.set_data_from_numpy(for_tritonclient(d, array))
        tensors.append(tensor)
    result = client.infer("m", tensors)
    client.close()
    return {f"y_{_datatype(n)}": result.as_numpy(f"y_{_datatype(n)}") for n in inputs}


def project_http(server: Server, inputs: Inputs, *, binary: bool) -> dict[str, np.ndarray]:
    body, header_length = http_infer_body(inputs, binary=binary)
    headers = {"Content-Type": "application/json"}
    if header_length:
        headers["Inference-Header-Content-Length"] = str(header_length)
    response = requests.post(server.infer_url("m"), data=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text[:500]
    length = response.headers.get("Inference-Header-Content-Length")
    result = tritonhttp.InferenceServerClient.parse_response_body(
        response.content, header_length=int(length) if length else None
    )
    return {f"y_{_datatype(n)}": result.as_numpy(f"y_{_datatype(n)}") for n in inputs}


def _grpc_call(server: Server, request: Any) -> dict[str, np.ndarray]:
    with grpc.insecure_channel(server.grpc) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    result = tritongrpc.InferResult(reply)  # tritonclient's decoder reads the same proto fields
    return {o.name: result.as_numpy(o.name) for o in reply.outputs}


def project_grpc_raw(server: Server, inputs: Inputs) -> dict[str, np.ndarray]:
    return _grpc_call(server, grpc_infer_request("m", inputs))


_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def grpc_typed(server: Server, inputs: Inputs) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name="m")
    for name, array in inputs.items():
        d = _datatype(name)
        tensor = request.inputs.add(name=name, datatype=d, shape=array.shape)
        values = for_tritonclient(d, array).reshape(-1).tolist()
        getattr(tensor.contents, _TYPED_FIELD[d]).extend(values)
    return _grpc_call(server, request)


WIRES: dict[str, tuple[Wire, bool]] = {  # name -> (send, carries numbers as text)
    "tritonclient-http-json": (lambda s, b: triton_http(s, b, binary=False), True),
    "tritonclient-http-binary": (lambda s, b: triton_http(s, b, binary=True), False),
    "tritonclient-grpc-raw": (concurrently(triton_grpc), False),
    "project-http-json": (concurrently(lambda s, i: project_http(s, i, binary=False)), True),
    "project-http-binary": (concurrently(lambda s, i: project_http(s, i, binary=True)), False),
    "project-grpc-raw": (concurrently(project_grpc_raw), False),
    "grpc-typed-contents": (concurrently(grpc_typed), False),
}


# -- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("datatypes")
    return {
        "numeric": identity_model(d / "numeric.onnx", NUMERIC_DATATYPES),
        "typed": identity_model(d / "typed.onnx", TYPED_DATATYPES),
    }


@pytest.fixture(scope="module", params=list(CONFIGS))
def servers(
    request: pytest.FixtureRequest,
    models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Server]]:
    """The two identity models, each served with one configuration."""
    tmp = tmp_path_factory.mktemp("serve")
    started: dict[str, Server] = {}
    try:
        for key, path in models.items():
            started[key] = start_server(
                tmp, "--model", str(path), "--model-name", "m", *CONFIGS[request.param]
            )
        yield started
    finally:
        for s in started.values():
            assert s.stop() == 0


@pytest.mark.parametrize("model", ["numeric", "typed"])
@pytest.mark.parametrize("wire", list(WIRES))
def test_every_datatype_is_exact(
    servers: dict[str, Server], models: dict[str, Path], wire: str, model: str
) -> None:
    """Together the two models hold every datatype: the numeric one all but BYTES, the typed
    one the twelve that gRPC typed contents carry (BYTES included)."""
    send, text_wire = WIRES[wire]
    if wire == "grpc-typed-contents" and model == "numeric":
        pytest.skip("FP16 and BF16 have no typed contents field (test_grpc_refusals)")
    datatypes = TYPED_DATATYPES if model == "typed" else NUMERIC_DATATYPES
    reference = OnnxRuntimeBackend(models[model])
    requests_ = [
        {f"x_{d}": sample(d, rows, seed, text_wire=text_wire) for d in datatypes}
        for seed, rows in enumerate(ROWS)
    ]
    answers = send(servers[model], requests_)
    wrong: dict[str, str] = {}
    for inputs, answer in zip(requests_, answers, strict=True):
        expected = reference.infer(inputs)
        for d in datatypes:
            got, want = canonical(d, answer[f"y_{d}"]), canonical(d, expected[f"y_{d}"])
            if got != want or answer[f"y_{d}"].shape != expected[f"y_{d}"].shape:
                wrong[d] = f"sent {inputs[f'x_{d}'].tolist()!r}, got {answer[f'y_{d}'].tolist()!r}"
    assert not wrong, json.dumps(wrong, indent=1, default=str)


# -- values a datatype cannot hold ---------------------------------------------------------

JSON_REFUSALS = [
    ("INT8", 128),
    ("UINT8", -1),
    ("UINT64", 2**64),
    ("INT64", 2**63),
    ("INT32", 1.5),
    ("INT16", "1"),
    ("UINT32", None),
    ("FP16", 70000.0),
    ("FP32", 1e39),
    ("BF16", 1e39),
    ("FP64", "x"),
    ("FP32", None),
    ("BOOL", 2),
    ("BOOL", "true"),
    ("BYTES", 5),
]


def _json_body(datatypes: tuple[str, ...], bad: str, value: Any) -> dict[str, Any]:
    inputs = []
    for d in datatypes:
        data = for_tritonclient(d, sample(d, 1, 0, text_wire=True))
        if d == "BYTES":
            data = sample(d, 1, 0, text_wire=True)
        entry = {"name": f"x_{d}", "datatype": d, "shape": [1, 3], "data": data.ravel().tolist()}
        if d == bad:
            entry["data"] = [value, *entry["data"][1:]]
        inputs.append(entry)
    return {"inputs": inputs}


@pytest.mark.parametrize(("datatype", "value"), JSON_REFUSALS)
def test_json_values_the_datatype_cannot_hold_are_refused_naming_the_input(
    servers: dict[str, Server], datatype: str, value: Any
) -> None:
    model = "typed" if datatype == "BYTES" else "numeric"
    datatypes = TYPED_DATATYPES if model == "typed" else NUMERIC_DATATYPES
    body = _json_body(datatypes, datatype, value)
    response = requests.post(servers[model].infer_url("m"), json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert f"input 'x_{datatype}'" in response.json()["error"]


def _typed(datatypes: tuple[str, ...], bad: str, values: list[Any]) -> Any:
    request = pb.ModelInferRequest(model_name="m")
    for d in datatypes:
        tensor = request.inputs.add(name=f"x_{d}", datatype=d, shape=[1, 3])
        field = _TYPED_FIELD.get(d, "fp32_contents")
        data = values if d == bad else for_tritonclient(d, sample(d, 1, 0, text_wire=False))
        getattr(tensor.contents, field).extend(list(np.asarray(data).reshape(-1).tolist()))
    return request


@pytest.mark.parametrize(
    ("datatype", "values", "code"),
    [
        ("INT8", [128, 0, 0], "INVALID_ARGUMENT"),
        ("INT16", [-40000, 0, 0], "INVALID_ARGUMENT"),
        ("UINT8", [256, 0, 0], "INVALID_ARGUMENT"),
        ("UINT16", [70000, 0, 0], "INVALID_ARGUMENT"),
        ("BYTES", [b"\xff", b"a", b"b"], "INVALID_ARGUMENT"),
        ("FP16", [1.0, 2.0, 3.0], "INVALID_ARGUMENT"),  # FP16 travels raw only
    ],
)
def test_grpc_refusals(
    servers: dict[str, Server], datatype: str, values: list[Any], code: str
) -> None:
    model = "numeric" if datatype == "FP16" else "typed"
    datatypes = NUMERIC_DATATYPES if model == "numeric" else TYPED_DATATYPES
    with grpc.insecure_channel(servers[model].grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_typed(datatypes, datatype, values))
    assert info.value.code().name == code
    assert f"input 'x_{datatype}'" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("datatype", "raw"), [("BOOL", b"\x01\x02\x00"), ("BYTES", b"\x01\x00\x00\x00\xff" * 3)]
)
@pytest.mark.parametrize("wire", ["grpc-raw", "http-binary"])
def test_raw_refusals(servers: dict[str, Server], datatype: str, raw: bytes, wire: str) -> None:
    """A BOOL byte other than 0 and 1, BYTES that are not UTF-8 for a string tensor."""
    model = "typed" if datatype == "BYTES" else "numeric"
    datatypes = TYPED_DATATYPES if model == "typed" else NUMERIC_DATATYPES
    inputs = {f"x_{d}": sample(d, 1, 0, text_wire=False) for d in datatypes}
    if wire == "grpc-raw":
        request = grpc_infer_request("m", inputs)
        request.raw_input_contents[datatypes.index(datatype)] = raw
        with grpc.insecure_channel(servers[model].grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"input 'x_{datatype}'" in (info.value.details() or "")
        return
    head: dict[str, Any] = {"inputs": []}
    chunks = []
    for d in datatypes:
        data = raw if d == datatype else raw_bytes(inputs[f"x_{d}"])
        head["inputs"].append(
            {
                "name": f"x_{d}",
                "datatype": d,
                "shape": [1, 3],
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    header = json.dumps(head).encode()
    response = requests.post(
        servers[model].infer_url("m"),
        data=header + b"".join(chunks),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert f"input 'x_{datatype}'" in response.json()["error"]
