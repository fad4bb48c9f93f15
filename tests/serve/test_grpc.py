"""OIP v2 over gRPC: Triton's off-the-shelf client, and typed ``contents`` via our own stubs, on
the default server (h2); grpc.aio's (TRTOPS_GRPC_SERVER=grpcio) at the end."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from trtops_worker.serve.proto import grpc_predict_v2_pb2 as pb
from trtops_worker.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

from .conftest import Server, conv_input
from .test_rest import reference

tritonclient = pytest.importorskip("tritonclient.grpc")


def test_health_metadata_and_raw_infer_with_tritonclient(server: Server, model_dir: Path) -> None:
    client = tritonclient.InferenceServerClient(server.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("conv")
    assert client.is_model_ready("conv", "r1")
    assert client.get_server_metadata().name == "trtops"
    meta = client.get_model_metadata("conv")
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 3, 32, 32])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("logits", "FP32", [-1, 10])
    ]
    x = conv_input(2, seed=3)
    tensor = tritonclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # travels as raw_input_contents
    result = client.infer("conv", [tensor], request_id="g-1")
    assert result.get_response().id == "g-1"
    np.testing.assert_array_equal(result.as_numpy("logits"), reference(model_dir, x))
    client.close()


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.get_model_metadata("other"), "NOT_FOUND"),
        (lambda c: c.is_model_ready("conv", "r9"), "NOT_FOUND"),
    ],
)
def test_unknown_model_is_not_found(server: Server, call: object, code: str) -> None:
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(server.grpc)
    with pytest.raises(InferenceServerException) as info:
        call(client)  # type: ignore[operator]
    assert code in str(info.value.status())
    client.close()


def stub(server: Server) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_give_raw_output_contents(server: Server, model_dir: Path) -> None:
    x = conv_input(1, seed=4)
    request = pb.ModelInferRequest(model_name="conv", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    channel, client = stub(server)
    with channel:
        reply = client.ModelInfer(request)
    assert reply.id == "typed"
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("logits", "FP32", [1, 10])
    ]
    out = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(1, 10)
    np.testing.assert_array_equal(out, reference(model_dir, x))


def bad_request(**changes: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="conv")
    shape = changes.pop("shape", [1, 3, 32, 32])
    datatype = changes.pop("datatype", "FP32")
    raw = changes.pop("raw", np.zeros((1, 3, 32, 32), np.float32).tobytes())
    request.inputs.add(name=str(changes.pop("name", "input")), datatype=str(datatype), shape=shape)  # type: ignore[arg-type]
    request.raw_input_contents.append(raw)  # type: ignore[arg-type]
    return request


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (bad_request(name="image"), grpc.StatusCode.INVALID_ARGUMENT),
        (bad_request(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT),
        (bad_request(shape=[1, 3, 32, 31]), grpc.StatusCode.INVALID_ARGUMENT),
        (bad_request(raw=b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ModelInferRequest(model_name="other"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_grpc_client_mistakes(
    server: Server, request_: pb.ModelInferRequest, code: grpc.StatusCode
) -> None:
    channel, client = stub(server)
    with channel, pytest.raises(grpc.RpcError) as info:
        client.ModelInfer(request_)
    assert info.value.code() == code


def test_metadata_reports_the_backend_in_trailing_metadata(server: Server) -> None:
    channel, client = stub(server)
    with channel:
        _, call = client.ModelMetadata.with_call(pb.ModelMetadataRequest(name="conv"))
    assert dict(call.trailing_metadata())["trtops-fallback"] == "false"


@pytest.mark.parametrize("implementation", ["grpcio", "h2"])
def test_grpc_requests_are_batched_under_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, implementation: str
) -> None:
    """32 concurrent gRPC clients on a fast model with two instances: requests merge as they do
    over HTTP (the batch-size histogram's mean; it was 1.0 when gRPC arrivals went unseen), on
    either gRPC server (TRTOPS_GRPC_SERVER)."""
    monkeypatch.setenv("TRTOPS_GRPC_SERVER", implementation)
    import asyncio

    from trtops_worker.bench.clients import grpc_infer_request

    from tests.support.worker import start_server

    from .models import lookup_model

    s = start_server(
        tmp_path,
        "--model",
        str(lookup_model(tmp_path / "lookup.onnx")),
        "--model-name",
        "lookup",
        "--max-batch-size",
        "16",
        "--max-queue-delay-us",
        "20000",
        "--instances",
        "2",
    )
    request = grpc_infer_request("lookup", {"ids": np.array([[1]], np.int64)})

    async def load() -> None:
        async with grpc.aio.insecure_channel(s.grpc) as channel:
            client = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one_client() -> None:
                for _ in range(20):
                    await client.ModelInfer(request)

            await asyncio.gather(*(one_client() for _ in range(32)))

    try:
        batches, rows = s.metric("trtops_batch_size_count"), s.metric("trtops_batch_size_sum")
        asyncio.run(load())
        batches = s.metric("trtops_batch_size_count") - batches
        rows = s.metric("trtops_batch_size_sum") - rows
        assert rows == 640
        assert rows / batches >= 3, f"mean batch {rows / batches:.2f} over gRPC"
    finally:
        assert s.stop() == 0


def test_the_grpcio_server_serves_the_same(model_dir: Path, tmp_path: Path) -> None:
    """--grpc-server grpcio: grpc.aio, the server before h2, still answers alike."""
    from tests.support.worker import start_server

    s = start_server(
        tmp_path,
        "--front-ends",
        "1",
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--grpc-server",
        "grpcio",
    )
    try:
        assert "(grpcio) metrics" in s.output()
        client = tritonclient.InferenceServerClient(s.grpc)
        x = conv_input(2, seed=3)
        tensor = tritonclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("conv", [tensor], request_id="g-2")
        np.testing.assert_array_equal(result.as_numpy("logits"), reference(model_dir, x))
        client.close()
        channel, stub_ = stub(s)
        with channel:
            _, call = stub_.ModelMetadata.with_call(pb.ModelMetadataRequest(name="conv"))
            assert dict(call.trailing_metadata())["trtops-fallback"] == "false"
            with pytest.raises(grpc.RpcError) as info:
                stub_.ModelInfer(bad_request(name="image"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        assert s.stop() == 0


def test_a_call_the_client_gives_up_on_counts_as_cancelled_not_a_server_error(
    model_dir: Path, tmp_path: Path
) -> None:
    """A gRPC deadline that passes while the call waits (the slow model, a batch ahead of it):
    outcome "cancelled", which no error rate counts (a canary must not roll back on it)."""
    import time

    from tests.support.worker import start_server

    s = start_server(
        tmp_path,
        "--front-ends",
        "1",
        "--model",
        str(model_dir / "slow.onnx"),
        "--model-name",
        "slow",
    )
    try:
        x = np.zeros((8, 3, 64, 64), np.float32)
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="input", datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        channel, client = stub(s)
        with channel:
            ahead = client.ModelInfer.future(request)  # keeps the one instance busy
            with pytest.raises(grpc.RpcError) as info:
                client.ModelInfer(request, timeout=0.005)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            ahead.result(timeout=60)
        deadline = time.monotonic() + 20
        while s.metric("trtops_requests_total", outcome="cancelled") < 1:
            assert time.monotonic() < deadline, s.metrics()
            time.sleep(0.1)
        assert s.metric("trtops_requests_total", outcome="server_error") == 0
        assert s.metric("trtops_requests_total", outcome="success") == 1
    finally:
        assert s.stop() == 0
