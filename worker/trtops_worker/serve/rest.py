"""OIP v2 over HTTP: one request handler, and two thin server interfaces over it.

:func:`create_handler` answers a request given its method, path, a header lookup and a body
reader; :func:`asgi_app` is it as a bare ASGI app (uvicorn with uvloop + httptools, or granian's
ASGI mode), :func:`rsgi_app` as an RSGI app (granian's own interface, no per-message
dicts). No web framework: the routes are six regular expressions, and the hot path (``infer``) is
a body read, ``orjson``, and one call into the data plane. Every error leaves as
``{"error": "..."}`` with the status its :class:`ServeError` class names; anything unexpected is
logged and answered 500 without taking the server down.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from .codec import decode_json_request, encode_json_response
from .dataplane import DataPlane
from .errors import BodyTimeout, InvalidInput, ModelNotFound, PayloadTooLarge, ServeError
from .shadow import SHADOW_HEADER
from .types import InferRequest, TensorSpec

__all__ = ["asgi_app", "create_app", "create_handler", "rsgi_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Header = Callable[[bytes], "bytes | None"]  # a request header by lower-case name
BodyReader = Callable[[int], Awaitable[bytes]]  # the whole body, PayloadTooLarge past the limit
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, Headers, bytes]
Handler = Callable[[str, str, Header, BodyReader], Awaitable[Response]]

_MODEL = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<op>/ready|/infer|/config|/stats)?/?$"
)
_JSON = [(b"content-type", b"application/json")]
_HEADER_LENGTH = b"inference-header-content-length"
_SHADOW = SHADOW_HEADER.encode()


class _Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_error(message: str) -> Exception:
    """What a body reader raises when the body cannot come (a disconnect, a malformed body):
    the handler answers 400 with ``message``, not counted as an inference failure."""
    return _Error(400, message)


async def _send(send: Send, status: int, body: bytes, headers: Headers = _JSON) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def declared_length(header: Header, limit: int) -> int | None:
    """``Content-Length`` if given; PayloadTooLarge before any read when it is over ``limit``."""
    declared = header(b"content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {int(declared)} bytes is over the {limit}-byte limit"
        )
    return int(declared)


def _add_chunk(parts: list[bytes], size: int, chunk: bytes, limit: int) -> int:
    size += len(chunk)
    if size > limit:
        raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
    parts.append(chunk)
    return size


async def _read_asgi(header: Header, receive: Receive, limit: int) -> bytes:
    declared_length(header, limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Error(400, "client disconnected")
        size = _add_chunk(parts, size, message.get("body", b""), limit)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _read_rsgi(header: Header, proto: Any, limit: int) -> bytes:
    if declared_length(header, limit) is not None:
        return bytes(await proto())  # the HTTP framing stops it at the declared length
    parts: list[bytes] = []
    size = 0
    async for chunk in proto:  # chunked: count as it comes
        size = _add_chunk(parts, size, chunk, limit)
    return b"".join(parts)


# HTTP content codings Triton's clients use -> zlib's wbits ("deflate" is the zlib format,
# RFC 9110 8.4.1.2, which is what tritonclient sends).
_CODINGS = {b"gzip": 31, b"deflate": 15}
_COMPRESS_FROM_BYTES = 1024  # smaller responses gain nothing from compression


def _decompress(body: bytes, coding: bytes, limit: int) -> bytes:
    """A ``Content-Encoding`` body, refused past ``limit`` bytes once decompressed (a small
    gzip bomb must not take the memory the body limit protects)."""
    coding = coding.strip().lower()
    if coding in (b"", b"identity"):
        return body
    wbits = _CODINGS.get(coding)
    if wbits is None:
        raise InvalidInput(
            f"Content-Encoding {coding.decode(errors='replace')!r} is not supported;"
            " use gzip or deflate"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {coding.decode()}: {e}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"request body decompresses past the {limit}-byte limit")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {coding.decode()} data")
    return out


def _response_coding(header: Header) -> bytes | None:
    """The first of gzip/deflate that ``Accept-Encoding`` allows (q=0 refuses), else None."""
    accept = header(b"accept-encoding")
    if not accept:
        return None
    for part in accept.split(b","):
        name, _, params = part.partition(b";")
        name = name.strip().lower()
        if name in _CODINGS and params.replace(b" ", b"") not in (b"q=0", b"q=0.0", b"q=0.00"):
            return name
    return None


def _compress(data: bytes, coding: bytes) -> bytes:
    return gzip.compress(data, mtime=0) if coding == b"gzip" else zlib.compress(data)


# Probes never wait behind inference: they are answered even when every request slot is taken.
_PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})
_CLOSE = (b"connection", b"close")


def create_handler(
    dataplane: DataPlane,
    *,
    max_body_bytes: int = 64 << 20,
    body_timeout_s: float = 30.0,
    max_requests: int = 1024,
) -> Handler:
    """The request handler for ``dataplane``: ``(method, path, header, read_body)`` to
    ``(status, headers, body)``; every error is answered here, nothing raises.

    ``max_body_bytes`` caps a body (decompressed too); ``body_timeout_s`` is the deadline for
    receiving it (408 after it, so stalled uploads free their slot); ``max_requests`` caps the
    requests in progress other than the health probes (503 past it): probes keep their own
    capacity, so a flood of slow clients cannot make the kubelet restart a healthy pod.
    """
    active = 0
    # Body-read deadlines: one sweeper task cancels reads past theirs (a timer per request, as
    # asyncio.timeout arms, cost ~10 us of the event loop per request).
    reading: dict[asyncio.Task[Any], float] = {}
    expired: set[asyncio.Task[Any]] = set()
    sweeper: list[asyncio.Task[None]] = []

    async def sweep() -> None:
        while True:
            await asyncio.sleep(min(1.0, body_timeout_s / 4))
            now = time.monotonic()
            for task, deadline in list(reading.items()):
                if deadline <= now and task not in expired:
                    expired.add(task)
                    task.cancel()

    async def read_body(read: BodyReader) -> bytes:
        task = asyncio.current_task()
        assert task is not None  # both interfaces run a request in a task
        if not sweeper:
            sweeper.append(asyncio.get_running_loop().create_task(sweep()))
        reading[task] = time.monotonic() + body_timeout_s
        try:
            return await read(max_body_bytes)
        except asyncio.CancelledError:
            if task not in expired:
                raise
            task.uncancel()
            raise BodyTimeout(f"request body not received within {body_timeout_s:g} s") from None
        finally:
            del reading[task]
            expired.discard(task)

    async def infer(header: Header, read: BodyReader, model: str, version: str | None) -> Response:
        started = time.perf_counter()
        try:
            with dataplane.arriving():
                body = await read_body(read)
                coding = header(b"content-encoding")
                if coding is not None:
                    body = _decompress(body, coding, max_body_bytes)
        except ServeError as e:
            dataplane.record_failure(started, e)
            raise
        header_length = header(_HEADER_LENGTH)

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

        shadow = header(_SHADOW) is not None  # a copy of another revision's request
        response, request = await dataplane.infer(model, version, decode, started, shadow=shadow)
        payload, raw = encode_json_response(response, request.binary_outputs)
        head = orjson.dumps(payload)
        headers = (
            [
                (b"content-type", b"application/octet-stream"),
                (_HEADER_LENGTH, str(len(head)).encode()),  # uncompressed, as Triton
            ]
            if raw
            else _JSON
        )
        data = head + raw if raw else head
        coding = _response_coding(header)
        if coding is not None and len(data) >= _COMPRESS_FROM_BYTES:
            data = _compress(data, coding)
            headers = [*headers, (b"content-encoding", coding)]
        return 200, headers, data

    def ok(payload: Any, status: int = 200) -> Response:
        return status, _JSON, orjson.dumps(payload)

    async def route(method: str, path: str, header: Header, read: BodyReader) -> Response:
        if path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/"):
            if method not in ("GET", "HEAD"):
                raise _Error(405, f"{method} is not allowed on {path}")
            if path == "/v2/health/live":
                return ok({"live": True})
            if path == "/v2/health/ready":
                ready = dataplane.ready
                return ok({"ready": ready}, 200 if ready else 400)
            return ok(dataplane.server_metadata())
        if path.rstrip("/") == "/v2/models/stats":  # every model's statistics (Triton)
            if method not in ("GET", "HEAD"):
                raise _Error(405, f"{method} is not allowed on {path}")
            return ok(dataplane.model_statistics())
        match = _MODEL.match(path)
        if match is None:
            raise _Error(404, f"no route {path}")
        model, version, op = match["model"], match["version"], match["op"]
        if op == "/infer":
            if method != "POST":
                raise _Error(405, f"use POST on {path}")
            return await infer(header, read, model, version)
        if method not in ("GET", "HEAD"):
            raise _Error(405, f"{method} is not allowed on {path}")
        if op == "/ready":
            ready = dataplane.model_ready(model, version)
            return ok({"name": model, "ready": ready}, 200 if ready else 400)
        if op == "/config":
            return ok(dataplane.model_config(model, version))
        if op == "/stats":
            return ok(dataplane.model_statistics(model, version))
        return ok(dataplane.model_metadata(model, version))

    async def handle(method: str, path: str, header: Header, read: BodyReader) -> Response:
        nonlocal active
        probe = path in _PROBES
        if not probe and active >= max_requests:
            body = orjson.dumps({"error": f"server busy: {active} requests in progress"})
            return 503, [*_JSON, _CLOSE], body
        active += 0 if probe else 1
        try:
            return await route(method, path, header, read)
        except ServeError as e:
            if not isinstance(e, ModelNotFound | InvalidInput):
                log.debug("request failed: %s", e)
            # the unread rest of a refused body must not be parsed as the next request
            headers = [*_JSON, _CLOSE] if isinstance(e, PayloadTooLarge | BodyTimeout) else _JSON
            return e.http_status, headers, orjson.dumps({"error": str(e)})
        except _Error as e:
            return ok({"error": str(e)}, e.status)
        except Exception:
            log.exception("unexpected error on %s %s", method, path)
            return ok({"error": "internal error"}, 500)
        finally:
            active -= 0 if probe else 1

    return handle


def create_app(
    dataplane: DataPlane,
    *,
    max_body_bytes: int = 64 << 20,
    body_timeout_s: float = 30.0,
    max_requests: int = 1024,
) -> ASGIApp:
    """:func:`create_handler` (same arguments) as an ASGI app; tests build one around whatever
    data plane they need."""
    return asgi_app(
        create_handler(
            dataplane,
            max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout_s,
            max_requests=max_requests,
        )
    )


def asgi_app(handle: Handler) -> ASGIApp:
    """``handle`` (:func:`create_handler`) as a bare ASGI app (uvicorn, granian's ASGI mode)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do
            return
        raw_headers = scope["headers"]

        def header(name: bytes) -> bytes | None:
            for key, value in raw_headers:
                if key == name:
                    return bytes(value)
            return None

        def read(limit: int) -> Awaitable[bytes]:
            return _read_asgi(header, receive, limit)

        status, headers, body = await handle(scope["method"], scope["path"], header, read)
        await _send(send, status, body, headers)

    return app


def rsgi_app(handle: Handler) -> Callable[[Any, Any], Awaitable[None]]:
    """``handle`` (:func:`create_handler`) as an RSGI app (granian's interface: headers as str,
    one call for the whole body, one for the whole response)."""

    async def app(scope: Any, proto: Any) -> None:
        if scope.proto != "http":  # websockets: nothing to do
            return
        raw_headers = scope.headers

        def header(name: bytes) -> bytes | None:
            value = raw_headers.get(name.decode())
            return None if value is None else value.encode("latin-1")

        def read(limit: int) -> Awaitable[bytes]:
            return _read_rsgi(header, proto, limit)

        status, headers, body = await handle(scope.method, scope.path, header, read)
        proto.response_bytes(
            status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], body
        )

    return app
