"""OIP v2's HTTP/1.1 listener: an asyncio protocol on httptools (llhttp) calling the request
handler (:func:`rest.create_handler`) directly, with no ASGI layer between them.

Why not uvicorn: its per-request work (an ASGI scope dict, a request-response cycle object,
three message dicts, header validation on every send) was about a third of the serving CPU
of an inference request (BENCHMARKS.md, "HTTP front end"). Here a request is one task running
the handler, whose answer leaves in one write.

What it keeps of an HTTP/1.1 server: keep-alive (closed after ``keep_alive_s`` idle, or when the
client or the answer says ``Connection: close``), pipelining (answers in request order),
chunked and ``Content-Length`` bodies, ``Expect: 100-continue``, HEAD, 400 on malformed
requests and 431 past ``max_header_bytes``, and a graceful stop: no new connections, idle ones
closed, answers in progress finished (at most ``graceful_timeout_s``) before the rest close.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

import httptools
import orjson

from .errors import PayloadTooLarge
from .frontends import bound_socket
from .rest import Handler, declared_length, read_error

__all__ = ["HttpOptions", "start_http11"]

log = logging.getLogger(__name__)

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = [(b"content-type", b"application/json")]
_CLOSE = (b"connection", b"close")
_ONE_WRITE_BYTES = 64 << 10  # bodies up to this size are copied behind the head: one send
_MAX_PIPELINED = 16  # requests parsed ahead of their answers before reading pauses


class _HeadersTooLarge(Exception):
    pass


@dataclass(frozen=True)
class HttpOptions:
    max_body_bytes: int  # stored bodies stop here (the handler answers 413)
    keep_alive_s: float = 5.0  # an idle connection (no request in progress) closes after this
    max_header_bytes: int = 64 << 10  # request line and headers together; 431 past it
    graceful_timeout_s: float = 30.0
    backlog: int = 1024


class _Request:
    __slots__ = (
        "body",
        "complete",
        "ended",
        "failure",
        "headers",
        "keep_alive",
        "method",
        "path",
        "refusal",
        "size",
        "waiter",
    )

    def __init__(self, method: str, path: str, headers: dict[bytes, bytes]) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.ended = False  # the rest of the body never comes (disconnect, half-close, bad bytes)
        self.keep_alive = True
        self.failure = "client disconnected"  # why a body that stops coming never completes
        self.waiter: asyncio.Future[None] | None = None
        self.refusal: tuple[int, str] | None = None  # an unparseable request's answer


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler on each, answers in order."""

    def __init__(self, server: _Listener) -> None:
        self._server = server
        self._options = server.options
        self._max_header_bytes = server.options.max_header_bytes
        self._handle = server.handle
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pipeline: deque[_Request] = deque()  # parsed, not answered yet; the first runs
        self._parsing: _Request | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._paused = False
        self._closing = False  # read no more; close once the requests received are answered
        self._eof = False  # the client half-closed: close once every answer owed is sent
        self.idle_since: float | None = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        while len(self._pipeline) > 1:  # not started: nobody is left to answer
            self._pipeline.pop()
        self._end_bodies()

    def _end_bodies(self, failure: str | None = None) -> None:
        """Bodies still on their way never come now: their readers fail (400)."""
        for request in self._pipeline:
            if not request.complete:
                request.ended = True
                if failure is not None:
                    request.failure = failure
            if request.waiter is not None and not request.waiter.done():
                request.waiter.set_result(None)

    def eof_received(self) -> bool:
        """The client sent all it will (a half-close, not a disconnect): the transport stays
        open for the answers owed; bodies still incomplete never come (400)."""
        if not self._pipeline:
            return False  # nothing owed: the transport closes
        self._eof = True
        self._end_bodies()
        return True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _HeadersTooLarge):
                raise
            limit = self._options.max_header_bytes
            self._refuse(431, f"request line and headers are over {limit} bytes")
        except httptools.HttpParserUpgrade:  # answered as plain HTTP/1.1, then closed
            self._refuse(400, "protocol upgrades are not supported", upgrade=True)
        except httptools.HttpParserError as e:
            self._refuse(400, f"malformed HTTP request: {e}")

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0

    # on_url and on_header count the bytes themselves (no helper call: ~5 per request)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header_bytes:  # stop storing them now
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value  # llhttp refuses a second Content-Length itself
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self._max_header_bytes:
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        self.idle_since = None
        raw = self._url.partition(b"?")[0].decode("latin-1")
        request = _Request(
            self._parser.get_method().decode("ascii"),
            unquote(raw) if "%" in raw else raw,
            self._headers,
        )
        request.keep_alive = self._parser.should_keep_alive()
        self._parsing = request
        self._pipeline.append(request)
        if len(self._pipeline) == 1:
            self._start(request)
        elif len(self._pipeline) >= _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def on_body(self, chunk: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        request.size += len(chunk)
        if request.size <= self._options.max_body_bytes:
            request.body.append(chunk)
        elif request.waiter is not None and not request.waiter.done():
            request.waiter.set_result(None)  # past the limit: refused now, not at the end

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is None:
            return
        request.complete = True
        if self._closing and self._transport is not None:
            self._transport.pause_reading()
        if request.waiter is not None and not request.waiter.done():
            request.waiter.set_result(None)

    # -- answering -------------------------------------------------------------------------

    def _start(self, request: _Request) -> None:
        self._loop.create_task(self._run(request))

    async def _run(self, request: _Request) -> None:
        if request.refusal is not None:
            status, message = request.refusal
            self._answer(request, status, [*_JSON, _CLOSE], _error(message))
            return

        async def read(limit: int) -> bytes:
            return await self._read(request, limit)

        status, headers, body = await self._handle(
            request.method, request.path, request.headers.get, read
        )
        self._answer(request, status, headers, body)

    async def _read(self, request: _Request, limit: int) -> bytes:
        declared_length(request.headers.get, limit)
        if not request.complete and not request.ended:
            if request.headers.get(b"expect", b"").lower() == b"100-continue":
                self._write(_CONTINUE)
            request.waiter = self._loop.create_future()
            await request.waiter
        if request.size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        if not request.complete:
            raise read_error(request.failure)
        body = request.body
        return body[0] if len(body) == 1 else b"".join(body)

    def _answer(
        self, request: _Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        last = self._closing and len(self._pipeline) == 1
        close = not request.keep_alive or last or _CLOSE in headers
        head = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        end = b"\r\n" if not close or _CLOSE in headers else b"connection: close\r\n\r\n"
        head.append(b"content-length: %d\r\n%s" % (len(body), end))
        if request.method == "HEAD":
            self._write(b"".join(head))
        elif len(body) <= _ONE_WRITE_BYTES:
            head.append(body)
            self._write(b"".join(head))
        elif self._transport is not None:
            self._transport.writelines([b"".join(head), body])
        self._pipeline.popleft()
        if close or not request.complete:  # an unread body would be parsed as the next request
            self._close()
            return
        if self._pipeline:
            self._start(self._pipeline[0])
        elif self._eof:
            self._close()
            return
        else:
            self.idle_since = time.monotonic()
        resume = self._paused and not self._closing and len(self._pipeline) < _MAX_PIPELINED
        if resume and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False

    def _refuse(self, status: int, message: str, *, upgrade: bool = False) -> None:
        """A request that could not be parsed: answer it after the answers already owed, and
        close (nothing after it can be trusted to start where it seems to). A body that could
        not be parsed, or an upgrade, is answered by its own request's handler instead."""
        if self._transport is not None:
            self._transport.pause_reading()
        self._paused = False  # never resumed: the parser has failed
        self._end_bodies(message)
        parsing = self._parsing
        if parsing is not None and parsing in self._pipeline and (upgrade or not parsing.complete):
            self._closing = True
            return
        request = _Request("", "", {})
        request.keep_alive = False
        request.refusal = (status, message)
        self._pipeline.append(request)
        if len(self._pipeline) == 1:
            self._start(request)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def shut(self) -> None:
        """The server is stopping: close now if idle, else once every request received is
        answered (a body on its way still comes; nothing after it is read)."""
        self._closing = True
        if not self._pipeline:
            self._close()
        elif self._transport is not None and (self._parsing is None or self._parsing.complete):
            self._transport.pause_reading()


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class _Listener:
    def __init__(self, handle: Handler, options: HttpOptions) -> None:
        self.handle = handle
        self.options = options
        self.connections: set[_Connection] = set()

    async def close_idle(self) -> None:
        """Close keep-alive connections idle past ``keep_alive_s`` (also half-sent headers)."""
        while True:
            await asyncio.sleep(min(1.0, self.options.keep_alive_s / 2))
            cutoff = time.monotonic() - self.options.keep_alive_s
            for connection in list(self.connections):
                if connection.idle_since is not None and connection.idle_since < cutoff:
                    connection.shut()

    async def stop(self, server: asyncio.Server, sweeper: asyncio.Task[None]) -> None:
        server.close()  # no new connections
        sweeper.cancel()
        for connection in list(self.connections):
            connection.shut()
        deadline = time.monotonic() + self.options.graceful_timeout_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):  # past the grace period
            connection._close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def start_http11(
    handle: Handler, host: str, port: int, options: HttpOptions, *, reuse_port: bool = False
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Listen on ``host:port`` (``SO_REUSEPORT`` with ``reuse_port``, so front ends share it);
    returns the bound port and a coroutine function that stops gracefully. OSError if the port
    cannot be bound."""
    listener = _Listener(handle, options)
    sock = bound_socket(host, port, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(listener), sock=sock, backlog=options.backlog
    )
    sweeper = loop.create_task(listener.close_idle(), name="trtops-http-idle")

    async def stop() -> None:
        await listener.stop(server, sweeper)

    return sock.getsockname()[1], stop
