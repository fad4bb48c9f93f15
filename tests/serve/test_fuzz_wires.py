"""Hypothesis over every wire at once: mixed batches of good and malformed requests.

Each example sends up to six requests concurrently to a batching server (Identity over INT8,
FP32 and BYTES), each on a random wire (HTTP JSON, HTTP binary extension, HTTP gzip, gRPC raw,
gRPC typed contents) and either well-formed or carrying one client mistake. A good request must
get exactly its inputs back, a bad one a 4xx / client status, never a 5xx, even when it shares a
batch with good ones; the server stays live and counts no server error.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trtops_worker.serve.codec import raw_bytes
from trtops_worker.serve.proto import pb, pb_grpc

from tests.support.worker import Server, start_server

from .models import identity_model

tritongrpc = pytest.importorskip("tritonclient.grpc")

DATATYPES = ("INT8", "FP32", "BYTES")
WIRES = ("http-json", "http-binary", "http-gzip", "grpc-raw", "grpc-typed")
MISTAKES = ("datatype", "shape", "missing", "unknown", "sequence", "truncate", "value")
GRPC_CLIENT_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = start_server(
        tmp,
        "--model",
        str(identity_model(tmp / "mixed.onnx", DATATYPES)),
        "--model-name",
        "m",
        "--max-batch-size",
        "16",
        "--max-queue-delay-us",
        "20000",
    )
    yield server
    assert server.stop() == 0


@dataclass
class Tensor:
    datatype: str
    shape: list[int]
    values: np.ndarray


@dataclass
class Request:
    wire: str
    tensors: dict[str, Tensor]
    mistake: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


int8s = st.integers(-128, 127)
fp32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
texts = st.text(max_size=5)


@st.composite
def requests_(draw: st.DrawFn) -> Request:
    rows = draw(st.integers(1, 3))
    values = {
        "INT8": np.array(draw(st.lists(int8s, min_size=rows * 3, max_size=rows * 3)), np.int8),
        "FP32": np.array(draw(st.lists(fp32s, min_size=rows * 3, max_size=rows * 3)), np.float32),
        "BYTES": np.array(draw(st.lists(texts, min_size=rows * 3, max_size=rows * 3)), object),
    }
    tensors = {f"x_{d}": Tensor(d, [rows, 3], values[d].reshape(rows, 3)) for d in DATATYPES}
    request = Request(draw(st.sampled_from(WIRES)), tensors)
    mistake = draw(st.none() | st.sampled_from(MISTAKES))
    request.mistake = mistake
    if mistake == "datatype":
        tensors["x_FP32"].datatype = "FP64"
    elif mistake == "shape":
        tensors["x_INT8"].shape = [rows, 4]
    elif mistake == "missing":
        del tensors["x_BYTES"]
    elif mistake == "unknown":
        tensors["nope"] = Tensor("INT8", [rows, 3], values["INT8"].reshape(rows, 3))
    elif mistake == "sequence":
        request.parameters = {"sequence_id": draw(st.integers(1, 99))}
    return request


def _json_entry(name: str, t: Tensor, mistake: str | None) -> dict[str, Any]:
    data: list[Any] = t.values.reshape(-1).tolist()
    if mistake == "truncate":
        data = data[:-1]
    if mistake == "value" and name == "x_INT8":
        data[0] = 128 + abs(int(data[0]))  # out of INT8's range
    return {"name": name, "datatype": t.datatype, "shape": t.shape, "data": data}


def _raw(name: str, t: Tensor, mistake: str | None) -> bytes:
    raw = raw_bytes(t.values)
    if mistake == "truncate":
        return raw[:-1]
    if mistake == "value" and name == "x_BYTES":
        return b"\x01\x00\x00\x00\xff" + raw[4 + len(t.values.reshape(-1)[0].encode()) :]
    return raw


def send(server: Server, r: Request) -> tuple[bool, dict[str, np.ndarray] | str]:
    """(ok, outputs) for a 200 / OK, else (False, the status): 'http_4xx' or a gRPC code."""
    if r.wire.startswith("http"):
        binary = r.wire == "http-binary"
        if binary:
            entries, chunks = [], []
            for name, t in r.tensors.items():
                raw = _raw(name, t, r.mistake)
                entries.append(
                    {
                        "name": name,
                        "datatype": t.datatype,
                        "shape": t.shape,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                )
                chunks.append(raw)
            head = json.dumps({"inputs": entries, "parameters": r.parameters}).encode()
            body = head + b"".join(chunks)
            headers = {"Inference-Header-Content-Length": str(len(head))}
        else:
            inputs = [_json_entry(n, t, r.mistake) for n, t in r.tensors.items()]
            body = json.dumps({"inputs": inputs, "parameters": r.parameters}).encode()
            headers = {"Content-Type": "application/json"}
            if r.wire == "http-gzip":
                body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        response = requests.post(server.infer_url("m"), data=body, headers=headers, timeout=30)
        if response.status_code != 200:
            assert isinstance(response.json()["error"], str)
            return False, f"http_{response.status_code}"
        outputs = {
            o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None)
            for o in response.json()["outputs"]
        }
        return True, outputs
    request = pb.ModelInferRequest(model_name="m")
    for key, value in r.parameters.items():
        request.parameters[key].int64_param = value
    for name, t in r.tensors.items():
        tensor = request.inputs.add(name=name, datatype=t.datatype, shape=t.shape)
        if r.wire == "grpc-raw":
            request.raw_input_contents.append(_raw(name, t, r.mistake))
            continue
        entry = _json_entry(name, t, r.mistake)
        if t.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(s.encode() for s in entry["data"])
        elif t.datatype == "INT8":
            tensor.contents.int_contents.extend(entry["data"])
        else:
            tensor.contents.fp32_contents.extend(entry["data"])
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    except grpc.RpcError as e:
        return False, e.code().name
    result = tritongrpc.InferResult(reply)
    return True, {o.name: result.as_numpy(o.name) for o in reply.outputs}


def _same(name: str, got: np.ndarray, want: np.ndarray) -> bool:
    if name == "y_BYTES":
        return [x if isinstance(x, bytes) else str(x).encode() for x in got.reshape(-1)] == [
            s.encode() for s in want.reshape(-1)
        ]
    return bool(np.array_equal(np.asarray(got, want.dtype).reshape(want.shape), want))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(requests_(), min_size=1, max_size=6))
def test_mixed_batches_over_every_wire(mixed: Server, batch: list[Request]) -> None:
    with ThreadPoolExecutor(len(batch)) as pool:
        answers = list(pool.map(lambda r: send(mixed, r), batch))
    for r, (ok, answer) in zip(batch, answers, strict=True):
        if r.mistake is None:
            assert ok, (r.wire, answer)
            assert isinstance(answer, dict)
            for name, t in r.tensors.items():
                out = name.replace("x_", "y_")
                assert _same(out, answer[out], t.values), (r.wire, name)
        else:
            # the "value" mistake is INT8 out of range on text wires, invalid UTF-8 on raw ones
            assert not ok, (r.wire, r.mistake)
            assert answer in GRPC_CLIENT_CODES or str(answer).startswith("http_4"), (r, answer)


def test_the_server_is_live_and_blamed_no_one_else(mixed: Server) -> None:
    assert requests.get(f"{mixed.url}/v2/health/live", timeout=5).status_code == 200
    assert mixed.metric("trtops_requests_total", outcome="server_error") == 0
    assert mixed.metric("trtops_requests_total", outcome="success") > 0
