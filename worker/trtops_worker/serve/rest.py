"""OIP v2 over HTTP as a bare ASGI app (run by uvicorn with uvloop + httptools).

No web framework: the routes are six regular expressions, and the hot path (``infer``) is a body
read, ``orjson``, and one call into the data plane. Every error leaves as ``{"error": "..."}``
with the status its :class:`ServeError` class names; anything unexpected is logged and answered
500 without taking the server down.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from .codec import decode_json_request, encode_json_response
from .dataplane import DataPlane
from .errors import InvalidInput, ModelNotFound, PayloadTooLarge, ServeError
from .types import InferRequest, TensorSpec

__all__ = ["create_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MODEL = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<op>/ready|/infer)?/?$"
)
_JSON = [(b"content-type", b"application/json")]
_HEADER_LENGTH = b"inference-header-content-length"


class _Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _send(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: Any) -> None:
    await _send(send, status, orjson.dumps(payload))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {int(declared)} bytes is over the {limit}-byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Error(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(dataplane: DataPlane, *, max_body_bytes: int = 64 << 20) -> ASGIApp:
    """The ASGI app for ``dataplane``; tests build one around whatever data plane they need."""

    async def infer(
        scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        started = time.perf_counter()
        try:
            with dataplane.arriving():
                body = await _read_body(scope, receive, max_body_bytes)
        except ServeError as e:
            dataplane.record_failure(started, e)
            raise
        header_length = _header(scope, _HEADER_LENGTH)

        def decode(specs: Sequence[TensorSpec], output_names: Sequence[str]) -> InferRequest:
            json_part, binary = body, b""
            if header_length is not None:
                if not header_length.isdigit() or int(header_length) > len(body):
                    raise InvalidInput("Inference-Header-Content-Length does not fit the body")
                json_part, binary = body[: int(header_length)], body[int(header_length) :]
            try:
                parsed = orjson.loads(json_part)
            except orjson.JSONDecodeError as e:
                raise InvalidInput(f"malformed JSON: {e}") from None
            return decode_json_request(parsed, specs, output_names, binary)

        response, request = await dataplane.infer(model, version, decode, started)
        payload, raw = encode_json_response(response, request.binary_outputs)
        if not raw:
            await _send(send, 200, orjson.dumps(payload))
            return
        head = orjson.dumps(payload)
        await _send(
            send,
            200,
            head + raw,
            [
                (b"content-type", b"application/octet-stream"),
                (_HEADER_LENGTH, str(len(head)).encode()),
            ],
        )

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/"):
            if method not in ("GET", "HEAD"):
                raise _Error(405, f"{method} is not allowed on {path}")
            if path == "/v2/health/live":
                await _json(send, 200, {"live": True})
            elif path == "/v2/health/ready":
                ready = dataplane.ready
                await _json(send, 200 if ready else 400, {"ready": ready})
            else:
                await _json(send, 200, dataplane.server_metadata())
            return
        match = _MODEL.match(path)
        if match is None:
            raise _Error(404, f"no route {path}")
        model, version, op = match["model"], match["version"], match["op"]
        if op == "/infer":
            if method != "POST":
                raise _Error(405, f"use POST on {path}")
            await infer(scope, receive, send, model, version)
            return
        if method not in ("GET", "HEAD"):
            raise _Error(405, f"{method} is not allowed on {path}")
        if op == "/ready":
            ready = dataplane.model_ready(model, version)
            await _json(send, 200 if ready else 400, {"name": model, "ready": ready})
        else:
            await _json(send, 200, dataplane.model_metadata(model, version))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do
            return
        try:
            await route(scope, receive, send)
        except ServeError as e:
            if not isinstance(e, ModelNotFound | InvalidInput):
                log.debug("request failed: %s", e)
            await _json(send, e.http_status, {"error": str(e)})
        except _Error as e:
            await _json(send, e.status, {"error": str(e)})
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await _json(send, 500, {"error": "internal error"})

    return app
