"""One unary gRPC call as serve/grpc_dispatch.py sees it (:class:`Call`), and what answers it:
the HTTP/2 connection of serve/grpc_h2.py (:class:`Answers`). grpc_h2.py re-exports both."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from .grpc_wire import OK_TRAILERS, trailers

__all__ = ["Answers", "Call", "Dispatch"]


class Answers(Protocol):
    """What a call needs of its connection (grpc_h2.Connection): frames for its answer."""

    def send_response(self, stream: int, data: bytes, trailers: bytes) -> None:
        """A DATA frame holding ``data`` (one length-prefixed message), then ``trailers``."""

    def send_trailers_only(self, stream: int, trailers: bytes) -> None:
        """A trailers-only response (an error status)."""


class Call:
    """One stream's request as the dispatcher sees it; ``respond``/``fail`` answer it once."""

    __slots__ = (
        "_answered",
        "_conn",
        "body",
        "closed",
        "encoding",
        "method",
        "size",
        "stream",
        "task",
        "timeout_s",
    )

    def __init__(
        self,
        conn: Answers,
        stream: int,
        method: str,
        timeout_s: float | None,
        encoding: str = "identity",
    ) -> None:
        self._conn = conn
        self.stream = stream
        self.method = method
        self.timeout_s = timeout_s
        self.encoding = encoding  # grpc-encoding: how a message flagged compressed is
        self.body: list[bytes] = []
        self.size = 0
        self.closed = False  # reset by the client, or the connection is gone
        self.task: asyncio.Task[None] | None = None
        self._answered = False

    def respond(self, message: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        if self._answered or self.closed:
            return
        self._answered = True
        n = len(message)
        data = struct.pack(">BI", 0, n) + message
        block = trailers(0, "", metadata) if metadata else OK_TRAILERS
        self._conn.send_response(self.stream, data, block)

    def fail(self, code: int, details: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        """A trailers-only response: status ``code`` (a grpc.StatusCode's number)."""
        if self._answered or self.closed:
            return
        self._answered = True
        self._conn.send_trailers_only(self.stream, trailers(code, details, metadata))


Dispatch = Callable[[Call], Coroutine[Any, Any, None]]
