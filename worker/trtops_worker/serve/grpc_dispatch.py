"""The gRPC service's methods behind serve/grpc_h2.py's HTTP/2 server (the default gRPC server).

The same generated handlers (protobuf in and out) and servicer as grpc.aio runs, with a
context that offers what the servicer uses: ``abort`` and ``set_trailing_metadata``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from .dataplane import DataPlane
from .frontends import bound_socket
from .grpc_h2 import Call, Connection, Dispatch

__all__ = ["H2Server", "create_h2_server"]

log = logging.getLogger(__name__)

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_UNKNOWN, _DEADLINE, _RESOURCE_EXHAUSTED, _UNIMPLEMENTED, _INTERNAL = 2, 4, 8, 12, 13
# the compressed encodings a client may send (what grpc.aio accepts): zlib's window bits
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


# How long an announced ModelInfer may take to deliver its message before the batcher stops
# waiting for it (a client that stalls, or sends a message over the size limit).
_ARRIVAL_GIVE_UP_S = 0.5


class _Arrivals:
    """The ModelInfer calls announced to the batcher (``DataPlane.arriving``) from their headers
    until their message is in, as the HTTP transport does while it reads a body: without it,
    gRPC requests reached the queue one at a time and ran alone (mean batch 1.0). One timer for
    all of them (the oldest's give-up time), not one per call."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane
        self._pending: dict[Call, tuple[float, contextlib.AbstractContextManager[None]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def announce(self, call: Call) -> None:
        arrival = self._dp.arriving()
        arrival.__enter__()
        self._pending[call] = (time.monotonic(), arrival)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_ARRIVAL_GIVE_UP_S, self._expire)

    def arrived(self, call: Call) -> None:
        entry = self._pending.pop(call, None)
        if entry is not None:
            entry[1].__exit__(None, None, None)

    def _expire(self) -> None:
        self._timer = None
        pending = self._pending
        cutoff = time.monotonic() - _ARRIVAL_GIVE_UP_S
        while pending:
            call = next(iter(pending))  # the oldest: dicts keep insertion order
            announced, arrival = pending[call]
            if announced > cutoff:
                self._timer = asyncio.get_running_loop().call_at(
                    announced + _ARRIVAL_GIVE_UP_S, self._expire
                )
                return
            del pending[call]
            arrival.__exit__(None, None, None)


class _Abort(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses."""

    __slots__ = ("trailing",)

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Abort(code.value[0], details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = tuple(metadata)


class H2Server:
    """Listens on a socket bound at construction (so its port is known before ``start``)."""

    def __init__(
        self,
        host: str,
        port: int,
        dispatch: Dispatch,
        *,
        on_headers: Callable[[Call], bool],
        on_closed: Callable[[Call], None],
        max_message_bytes: int,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        self.dispatch = dispatch
        self.max_message_bytes = max_message_bytes
        self._on_headers = on_headers
        self._on_closed = on_closed
        self.connections: set[Connection] = set()
        self.closing = False
        self._sock = bound_socket(host, port, reuse_port=reuse_port)
        self._sock.listen(backlog)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._server: asyncio.AbstractServer | None = None

    def on_headers(self, call: Call) -> bool:
        return self._on_headers(call)

    def on_closed(self, call: Call) -> None:
        self._on_closed(call)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), sock=self._sock)

    async def stop(self, grace: float | None) -> None:
        """Stop listening, tell every client to go away, and close each connection once its
        streams are answered (at most ``grace`` seconds; then in-flight calls are cut)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        connections = list(self.connections)
        for conn in connections:
            conn.go_away()
        waits = [asyncio.ensure_future(c.idle.wait()) for c in connections]
        if waits:
            await asyncio.wait(waits, timeout=grace)
        for w in waits:
            w.cancel()
        await asyncio.sleep(0)  # the last answers' write
        for conn in connections:
            conn.close()


def create_h2_server(
    dataplane: DataPlane,
    address: str,
    handlers: dict[str, grpc.RpcMethodHandler],
    *,
    max_message_bytes: int,
    reuse_port: bool,
) -> H2Server:
    """An :class:`H2Server` (bound, not started) running ``handlers`` (grpc_server's, by full
    method name). Raises OSError when ``address`` ('host:port') cannot be bound."""
    # arrivals only matter to a batcher that waits for them
    arrivals = _Arrivals(dataplane) if dataplane.batcher.batching else None

    def on_headers(call: Call) -> bool:
        if call.method not in handlers:
            return False
        if arrivals is not None and call.method == _INFER:
            arrivals.announce(call)
        return True

    def on_closed(call: Call) -> None:
        if arrivals is not None:
            arrivals.arrived(call)

    async def dispatch(call: Call) -> None:
        if arrivals is not None:
            arrivals.arrived(call)
        handler = handlers.get(call.method)
        if handler is None:
            call.fail(_UNIMPLEMENTED, "Method not found!")
            return
        body = b"".join(call.body) if len(call.body) != 1 else call.body[0]
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            call.fail(_INTERNAL, "malformed gRPC message framing")
            return
        message: bytes | memoryview = memoryview(body)[5:]  # no copy: the parser copies
        if body[0]:
            if call.encoding not in _WBITS:
                call.fail(_UNIMPLEMENTED, f"grpc-encoding {call.encoding!r} is not supported")
                return
            inflate = zlib.decompressobj(_WBITS[call.encoding])
            try:
                message = inflate.decompress(message, max_message_bytes + 1)
            except zlib.error as e:
                call.fail(_INTERNAL, f"cannot decompress the message: {e}")
                return
            if len(message) > max_message_bytes:
                call.fail(
                    _RESOURCE_EXHAUSTED, f"Received message larger than max (> {max_message_bytes})"
                )
                return
        try:
            request = handler.request_deserializer(message)
        except Exception:
            call.fail(_INTERNAL, "Exception deserializing request!")
            return
        context = _Context()
        timer = None
        if call.timeout_s is not None:
            task = call.task
            assert task is not None
            timer = asyncio.get_running_loop().call_later(max(call.timeout_s, 0.0), task.cancel)
        try:
            reply = await handler.unary_unary(request, context)
            call.respond(handler.response_serializer(reply), context.trailing)
        except _Abort as e:
            call.fail(e.code, e.details, context.trailing)
        except asyncio.CancelledError:
            call.fail(_DEADLINE, "Deadline Exceeded")  # a no-op when the client went away
        except Exception as e:
            log.exception("gRPC method %s failed", call.method)
            call.fail(_UNKNOWN, f"Unexpected {type(e)}: {e}")
        finally:
            if timer is not None:
                timer.cancel()

    host, _, port = address.rpartition(":")
    return H2Server(
        host.strip("[]"),  # "" or "::": every interface
        int(port),
        dispatch,
        on_headers=on_headers,
        on_closed=on_closed,
        max_message_bytes=max_message_bytes,
        reuse_port=reuse_port,
    )
