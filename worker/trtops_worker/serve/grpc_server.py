"""OIP v2 over gRPC (``inference.GRPCInferenceService``), sharing the data plane: the servicer, and
the server that runs it (our own HTTP/2 one, serve/grpc_h2.py, or ``grpc.aio``).

Inputs come as typed ``contents`` or as ``raw_input_contents``; outputs always leave as
``raw_output_contents`` (what Triton does, and what its clients read fastest). Errors map from
the :class:`ServeError` class to a status code: RESOURCE_EXHAUSTED for a full queue,
DEADLINE_EXCEEDED for a timeout, INVALID_ARGUMENT / NOT_FOUND for client mistakes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
import numpy as np
from google.protobuf import json_format

from .codec import (
    bytes_elements,
    check_parameters,
    check_range,
    check_tensor,
    decode_raw,
    raw_bytes,
)
from .dataplane import DataPlane
from .errors import InvalidInput, ServeError
from .proto import pb, pb_grpc
from .types import InferRequest, TensorSpec, datatype_of

__all__ = ["create_grpc_server"]

log = logging.getLogger(__name__)

# OIP datatype -> the InferTensorContents field that carries it (FP16 and BF16 travel raw only,
# as in Triton: the proto has no 16-bit float field).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The numpy type each contents field holds exactly, before the range check to the datatype.
_FIELD_NUMPY = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def parameters(message: Any) -> dict[str, Any]:
    """An ``InferParameter`` map as plain values."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def _contents(tensor: Any, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    check_tensor(spec, tensor.datatype, shape)
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input '{tensor.name}': {tensor.datatype} must be sent as raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):
        raise InvalidInput(
            f"input '{tensor.name}': {len(values)} values in {field},"
            f" shape {list(shape)} needs {math.prod(shape)}"
        )
    if tensor.datatype == "BYTES":
        return bytes_elements(list(values), tensor.name).reshape(shape)
    array: np.ndarray = np.array(values, dtype=_FIELD_NUMPY[field])
    if tensor.datatype != "BOOL":  # int_contents carries INT8/INT16 too: they must fit
        array = check_range(tensor.name, tensor.datatype, array)
    return array.reshape(shape)


def decode_grpc_request(
    message: Any, specs: Sequence[TensorSpec], output_names: Sequence[str]
) -> InferRequest:
    by_name = {s.name: s for s in specs}
    raw = message.raw_input_contents
    tensors = message.inputs
    if len(raw) and len(raw) != len(tensors):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(tensors)} inputs")
    # parameters are rare: their dicts and checks only when some are given
    request_parameters = parameters(message.parameters) if len(message.parameters) else {}
    check_parameters(request_parameters, "request")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        spec = by_name.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input '{name}'; the model takes {sorted(by_name)}")
        if name in inputs:
            raise InvalidInput(f"input '{name}' given twice")
        if len(tensor.parameters):
            check_parameters(parameters(tensor.parameters), f"input '{name}'")
        shape = tuple(tensor.shape)
        if shape and min(shape) < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        if len(raw):
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{name}': contents and raw_input_contents are exclusive")
            inputs[name] = decode_raw(spec, tensor.datatype, shape, raw[index])
        else:
            inputs[name] = _contents(tensor, spec, shape)
    if len(inputs) != len(specs):
        raise InvalidInput(f"missing inputs {[s.name for s in specs if s.name not in inputs]}")
    requested: list[str] | None = None
    if len(message.outputs):
        requested = []
        for out in message.outputs:
            if out.name not in output_names:
                raise InvalidInput(
                    f"unknown output '{out.name}'; the model gives {list(output_names)}"
                )
            if len(out.parameters):
                check_parameters(parameters(out.parameters), f"output '{out.name}'")
            requested.append(out.name)
    return InferRequest(
        inputs=inputs, id=message.id or None, outputs=requested, parameters=request_parameters
    )


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def _fail(self, context: grpc.aio.ServicerContext, error: ServeError) -> None:
        await context.abort(grpc.StatusCode[error.grpc_code], str(error))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._dp.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return pb.ModelReadyResponse(
                ready=self._dp.model_ready(request.name, request.version or None)
            )
        except ServeError as e:
            await self._fail(context, e)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**self._dp.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self._dp.model_metadata(request.name, request.version or None)
        except ServeError as e:
            await self._fail(context, e)
        params = meta["parameters"]
        # The proto has no parameters on model metadata: backend and fallback travel as metadata.
        context.set_trailing_metadata(
            (
                ("trtops-backend", str(params["backend"])),
                ("trtops-fallback", str(params["fallback"]).lower()),
            )
        )
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            config = self._dp.model_config(request.name, request.version or None)
        except ServeError as e:
            await self._fail(context, e)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            stats = self._dp.model_statistics(request.name, request.version or None)
        except ServeError as e:
            await self._fail(context, e)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response, _ = await self._dp.infer(
                request.model_name,
                request.model_version or None,
                lambda specs, names: decode_grpc_request(request, specs, names),
                started,
            )
        except ServeError as e:
            await self._fail(context, e)
        reply = pb.ModelInferResponse(
            model_name=response.model_name,
            model_version=response.model_version,
            id=response.id or "",
        )
        for name, array in response.outputs.items():
            reply.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            reply.raw_output_contents.append(raw_bytes(array))
        return reply


_INFER = "/inference.GRPCInferenceService/ModelInfer"
# How long an announced ModelInfer may take to deliver its message before the batcher stops
# waiting for it (a client that cancels, or a message over the size limit, never arrives).
_ARRIVAL_GIVE_UP_S = 0.5


class _Arrivals(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio is untyped here
    """Tells the batcher a ModelInfer is on its way from the moment its headers arrive until its
    handler runs, as the HTTP transport does while it reads a body.

    Without it gRPC requests reached the queue one event-loop round at a time, each found a free
    instance, and ran alone (mean batch 1.0 against ~14 rows over HTTP on the same load).
    """

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method != _INFER:
            return handler
        arrival = self._dp.arriving()
        arrival.__enter__()
        done = False

        def end() -> None:
            nonlocal done
            if not done:
                done = True
                arrival.__exit__(None, None, None)

        timer = asyncio.get_running_loop().call_later(_ARRIVAL_GIVE_UP_S, end)
        infer = handler.unary_unary

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            timer.cancel()
            end()
            return await infer(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _method_handlers(servicer: _Servicer) -> dict[str, grpc.RpcMethodHandler]:
    """The generated code's handler for each method, by full name ('/service/Method')."""
    found: dict[str, grpc.RpcMethodHandler] = {}

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            found.update({f"/{service}/{name}": h for name, h in handlers.items()})

    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, Capture())
    return found


class GrpcServer(Protocol):
    """What the server needs of either implementation."""

    async def start(self) -> None: ...
    async def stop(self, grace: float | None) -> Any: ...


def create_grpc_server(
    dataplane: DataPlane,
    address: str,
    *,
    max_message_bytes: int = 64 << 20,
    reuse_port: bool = False,
    implementation: str | None = None,
) -> tuple[GrpcServer, int]:
    """A gRPC server bound to ``address`` (not started); returns it and the bound port.

    ``implementation``: 'h2' (serve/grpc_h2.py: our own HTTP/2 server on the event loop, a
    quarter of grpc.aio's CPU per call) or 'grpcio' (grpc.aio); when None, the
    ``TRTOPS_GRPC_SERVER`` environment variable's, else h2. ``reuse_port``: share the port with
    the pod's other front ends (serve/frontends.py). Raises ValueError for another name, OSError
    when the address cannot be bound."""
    chosen = implementation or os.environ.get("TRTOPS_GRPC_SERVER")
    implementation = chosen or "h2"
    if implementation == "h2":
        try:
            from .grpc_dispatch import create_h2_server
        except ImportError as e:  # hpack missing: an install without the worker extra
            if chosen:
                raise
            log.warning("gRPC on grpc.aio, at ~4x the CPU per call: h2 needs %s", e)
            implementation = "grpcio"
    if implementation == "h2":
        h2 = create_h2_server(
            dataplane,
            address,
            _method_handlers(_Servicer(dataplane)),
            max_message_bytes=max_message_bytes,
            reuse_port=reuse_port,
        )
        return h2, h2.port
    if implementation != "grpcio":
        raise ValueError(f"unknown gRPC server {implementation!r}: h2 or grpcio")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        # arrivals only matter to a batcher that waits for them
        interceptors=[_Arrivals(dataplane)] if dataplane.batcher.batching else [],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(dataplane), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
