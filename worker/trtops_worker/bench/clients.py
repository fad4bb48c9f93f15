"""Minimal, fast OIP v2 clients for the load generator: one connection per worker, reused.

The HTTP client speaks HTTP/1.1 keep-alive over an asyncio stream with the request bytes encoded
once, because a general-purpose client costs more CPU per request than the server it measures on
a small machine. It checks the status and reads the whole body; it does not parse JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "BenchClient",
    "GrpcClient",
    "HttpClient",
    "RequestFailed",
    "fetch_metadata",
    "grpc_infer_request",
    "http_infer_body",
]


class RequestFailed(Exception):
    """A request that did not succeed; ``kind`` is the error-count key (``http_503``, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class BenchClient(Protocol):
    async def infer(self) -> None: ...
    async def close(self) -> None: ...


def http_infer_body(inputs: dict[str, np.ndarray], *, binary: bool = False) -> tuple[bytes, int]:
    """The request body, and the length of its JSON part when ``binary`` (else 0).

    ``binary`` uses Triton's binary tensor data extension both ways (what ``tritonclient.http``
    sends by default): the tensors follow the JSON header as raw little-endian bytes, and the
    outputs are asked for the same way, so neither side spends CPU on decimal text.
    """
    from trtops_worker.serve.codec import encode_tensor

    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, a in inputs.items():
        entry, raw = encode_tensor(name, a, binary=binary)
        entries.append(entry)
        chunks.append(raw)
    payload: dict[str, Any] = {"inputs": entries}
    if not binary:
        return json.dumps(payload).encode(), 0
    payload["parameters"] = {"binary_data_output": True}
    head = json.dumps(payload).encode()
    return head + b"".join(chunks), len(head)


class HttpClient:
    def __init__(self, url: str, model: str, body: bytes, header_length: int = 0) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        content = (
            f"Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {header_length}\r\n"
            if header_length
            else "Content-Type: application/json\r\n"
        )
        head = (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"{content}Content-Length: {len(body)}\r\n\r\n"
        )
        self._request = head.encode() + body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            except OSError as e:
                raise RequestFailed("connection", str(e)) from None
        return self._reader, self._writer

    async def infer(self) -> None:
        reader, writer = await self._connect()
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            await self.close()
            raise RequestFailed("connection", str(e)) from None
        if close:
            await self.close()
        if status != 200:
            raise RequestFailed(f"http_{status}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def grpc_infer_request(model: str, inputs: dict[str, np.ndarray]) -> Any:
    """A ``ModelInferRequest`` carrying ``inputs`` as ``raw_input_contents`` (what Triton's
    clients send: little-endian numbers, length-prefixed BYTES)."""
    from trtops_worker.serve.codec import raw_bytes
    from trtops_worker.serve.proto import pb
    from trtops_worker.serve.types import datatype_of

    request = pb.ModelInferRequest(model_name=model)
    for name, a in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(a), shape=a.shape)
        request.raw_input_contents.append(raw_bytes(a))
    return request


class GrpcClient:
    """One closed-loop worker's gRPC channel, or ``share``'s (one TCP connection for many
    workers, as an application with one channel sends everything)."""

    def __init__(
        self,
        target: str,
        model: str,
        inputs: dict[str, np.ndarray],
        share: GrpcClient | None = None,
    ) -> None:
        import grpc

        from trtops_worker.serve.proto import pb_grpc

        self._grpc = grpc
        self._owns_channel = share is None
        self._channel: grpc.aio.Channel
        if share is not None:
            self._channel = share._channel
        else:
            # Its own subchannel pool: gRPC otherwise shares one TCP connection among all
            # channels of a process to the same target, and the load of every worker of a load
            # process then reached one server process of a pod (SO_REUSEPORT spreads
            # connections, not requests).
            self._channel = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._request = grpc_infer_request(model, inputs)

    async def infer(self) -> None:
        try:
            await self._stub.ModelInfer(self._request)
        except self._grpc.aio.AioRpcError as e:
            raise RequestFailed(f"grpc_{e.code().name}", e.details() or "") from None

    async def close(self) -> None:
        if self._owns_channel:  # the sharers' calls have ended by now: the load is over
            await self._channel.close()


async def fetch_metadata(protocol: str, url: str, model: str) -> dict[str, Any]:
    """Model metadata over the chosen protocol (so random inputs match the served model)."""
    if protocol == "grpc":
        import grpc

        from trtops_worker.serve.proto import pb, pb_grpc

        async with grpc.aio.insecure_channel(grpc_target(url)) as channel:
            try:
                meta = await pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                    pb.ModelMetadataRequest(name=model)
                )
            except grpc.aio.AioRpcError as e:  # no server, no such model: a line, no traceback
                raise RequestFailed("metadata", f"{e.code().name}: {e.details()}") from None
        return {
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in meta.inputs
            ]
        }
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    writer.write(
        f"GET /v2/models/{model} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):  # an HTTP/2 server's GOAWAY, say: bytes, not a status
        raise RequestFailed("metadata", f"{url} did not answer HTTP/1.1 (a gRPC port?)")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RequestFailed(
            "metadata", head.split(b"\r\n")[0].decode(errors="replace") + " " + body[:200].decode()
        )
    metadata: dict[str, Any] = json.loads(body)
    return metadata


def grpc_target(url: str) -> str:
    """``grpc://host:port``, ``http://host:port`` or ``host:port`` -> ``host:port``."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    return f"{parts.hostname}:{parts.port or 8001}"
