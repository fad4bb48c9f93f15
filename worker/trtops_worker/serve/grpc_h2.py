"""Unary gRPC over a small HTTP/2 server of our own on the event loop (``TRTOPS_GRPC_SERVER=h2``).

Why: grpc.aio spends ~280 us of CPU per unary call on this wire before any of our code runs
(its core's threads hand every completion to the loop through a socket), 2-3x what the whole
HTTP binary path costs. This speaks only what a unary gRPC call needs (RFC 9113 frames, HPACK
through the ``hpack`` package, gRPC's length-prefixed messages and trailers) and answers in
as few writes as it can: one per loop round for every stream answered in it.

Not supported (a client gets an error, never a wrong answer): compressed messages
(UNIMPLEMENTED), streaming methods, TLS. Flow control is honoured both ways.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Protocol, cast

import hpack

from .grpc_call import Call, Dispatch
from .grpc_wire import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME,
    GOAWAY,
    HANDSHAKE_S,
    HEADERS,
    MAX_HEADER_BLOCK,
    MAX_STREAMS,
    MAX_WINDOW,
    NO_ERROR,
    OUR_SETTINGS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    timeout_s,
)

__all__ = ["Call", "Connection", "Dispatch"]

log = logging.getLogger(__name__)


class Server(Protocol):
    """What a connection needs of its server (grpc_dispatch.H2Server)."""

    connections: set[Connection]
    closing: bool
    max_message_bytes: int
    dispatch: Dispatch

    def on_headers(self, call: Call) -> bool:
        """False: no such method."""

    def on_closed(self, call: Call) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: frames in, a task per call, answers out."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface = False
        self._decoder = hpack.Decoder()
        self._header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self._calls: dict[int, Call] = {}  # streams open on the client's side
        self._headers_for: tuple[int, int, bytearray] | None = None  # stream, flags, block so far
        self._last_stream = 0
        self._received = 0  # DATA bytes since our last connection WINDOW_UPDATE
        self._send_window = 65535
        self._stream_windows: dict[int, int] = {}
        self._initial_window = 65535
        self._max_frame = 16384
        self._blocked: dict[int, tuple[bytearray, bytes]] = {}  # stream -> data left, trailers
        self._out: list[bytes] = []
        self._going_away = False
        self._handshake: asyncio.TimerHandle | None = None  # until our SETTINGS are acked
        self.idle = asyncio.Event()

    # -- transport callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._server.connections.add(self)
        self._write(
            frame(SETTINGS, 0, 0, OUR_SETTINGS)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
        )
        self.idle.set()
        loop = asyncio.get_running_loop()
        self._handshake = loop.call_later(HANDSHAKE_S, self._abort, PROTOCOL_ERROR)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._handshake is not None:
            self._handshake.cancel()
        for call in self._calls.values():
            self._close_call(call)
        self._calls.clear()
        self.idle.set()

    def pause_writing(self) -> None:
        """Answers are backing up (a client that sends calls but does not read): stop reading
        its calls until they drain, so they cannot pile up in memory."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if not self._preface:
            buffer += data
            if len(buffer) < len(PREFACE):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._abort(PROTOCOL_ERROR)
                return
            del buffer[: len(PREFACE)]
            self._preface = True
            data = b""
        # Frames are cut from ``data`` itself when nothing is left over from before (the usual
        # case: one copy of each payload, not three); only a partial frame is kept.
        source: bytes | bytearray = data
        if buffer:
            buffer += data
            source = buffer
        offset, size = 0, len(source)
        try:
            while size - offset >= 9:
                high, low, kind, flags, stream = FRAME.unpack_from(source, offset)
                length = (high << 8) | low
                end = offset + 9 + length
                if end > size:
                    break
                payload = bytes(memoryview(source)[offset + 9 : end])
                self._on_frame(kind, flags, stream & 0x7FFFFFFF, payload)
                offset = end
        except Exception as e:  # a malformed frame ends its connection, never the front end
            log.debug("gRPC connection closed: %r", e)
            self._abort(COMPRESSION_ERROR if isinstance(e, hpack.HPACKError) else PROTOCOL_ERROR)
            return
        if source is buffer:
            del buffer[:offset]
        elif offset < size:
            buffer += memoryview(data)[offset:]

    # -- frames ----------------------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._headers_for is not None and kind != CONTINUATION:
            raise ValueError("a header block was interrupted")
        if kind == DATA:
            self._on_data(flags, stream, payload)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._headers_for = (stream, flags, bytearray(payload))
            if flags & END_HEADERS:
                self._on_headers()
        elif kind == CONTINUATION:
            if self._headers_for is None or self._headers_for[0] != stream:
                raise ValueError("CONTINUATION without HEADERS")
            self._headers_for[2].extend(payload)
            if len(self._headers_for[2]) > MAX_HEADER_BLOCK:  # a CONTINUATION flood
                raise ValueError("a header block past MAX_HEADER_BLOCK")
            if flags & END_HEADERS:
                self._on_headers()
        elif kind == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
            elif self._handshake is not None:
                self._handshake.cancel()
                self._handshake = None
        elif kind == PING:
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream, struct.unpack(">I", payload)[0] & 0x7FFFFFFF)
        elif kind == RST_STREAM:
            call = self._calls.get(stream)
            if call is not None:
                self._close_call(call)
            self._blocked.pop(stream, None)
            self._finished(stream)
        elif kind == GOAWAY:
            self._going_away = True
        # PRIORITY, PUSH_PROMISE (never from a client) and unknown types are ignored

    def _on_settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise ValueError("SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta, self._initial_window = value - self._initial_window, value
                for s in self._stream_windows:
                    self._stream_windows[s] += delta
            elif key == 0x5:
                if not 1 << 14 <= value < 1 << 24:  # 0 cut answers into empty frames forever
                    raise ValueError("SETTINGS_MAX_FRAME_SIZE out of range")
                self._max_frame = value
            # HEADER_TABLE_SIZE bounds the table of our encoder, which never indexes
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        """A header block, cached by its bytes while the dynamic table stays unchanged (a
        client's repeated calls send the same few indexed bytes)."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table.dynamic_entries
        front, count = (table[0] if table else None), len(table)
        headers = [(str(name), str(value)) for name, value in self._decoder.decode(block)]
        if (table[0] if table else None) is front and len(table) == count:
            if len(self._header_cache) < 256 and len(block) <= 1024:  # 256 big blocks: 30 MB
                self._header_cache[block] = headers
        else:
            self._header_cache.clear()
        return headers

    def _on_headers(self) -> None:
        assert self._headers_for is not None
        stream, flags, block = self._headers_for
        self._headers_for = None
        headers = self._decode(bytes(block))
        if stream in self._calls or stream <= self._last_stream:
            return  # trailers from a client, or a stream already finished: nothing to do
        if stream % 2 == 0:
            raise ValueError("a client opened an even-numbered stream")
        self._last_stream = stream
        if self._going_away or self._server.closing or len(self._calls) >= MAX_STREAMS:
            self._write(frame(RST_STREAM, 0, stream, struct.pack(">I", REFUSED_STREAM)))
            return
        path, timeout, encoding = "", None, "identity"
        for name, value in headers:
            if name == ":path":
                path = value
            elif name == "grpc-timeout":
                timeout = timeout_s(value)
            elif name == "grpc-encoding":
                encoding = value
        call = Call(self, stream, path, timeout, encoding)
        self._calls[stream] = call
        self._stream_windows[stream] = self._initial_window
        self.idle.clear()
        if not self._server.on_headers(call):
            # at once, as grpc.aio does: a streaming client would wait for its half-close
            call.fail(12, "Method not found!")
            self._write(frame(RST_STREAM, 0, stream, struct.pack(">I", NO_ERROR)))
            return
        if flags & END_STREAM:
            self._on_request(call)

    def _on_data(self, flags: int, stream: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= MAX_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        call = self._calls.get(stream)
        if call is None or call.task is not None:
            return  # a stream already answered (too large) or reset: its data is dropped
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        call.body.append(payload)
        call.size += len(payload)
        if call.size > self._server.max_message_bytes + 5:
            limit = self._server.max_message_bytes
            call.fail(8, f"Received message larger than max ({call.size - 5} vs. {limit})")
            self._write(frame(RST_STREAM, 0, stream, struct.pack(">I", NO_ERROR)))
            self._server.on_closed(call)
            return
        if flags & END_STREAM:
            self._on_request(call)

    def _on_request(self, call: Call) -> None:
        call.task = asyncio.get_running_loop().create_task(self._server.dispatch(call))

    def _on_window_update(self, stream: int, increment: int) -> None:
        if stream == 0:
            self._send_window += increment
        elif stream in self._stream_windows:
            self._stream_windows[stream] += increment
        self._flush_blocked()

    # -- sending ---------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue bytes; everything queued in one loop round leaves in one write."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def _finished(self, stream: int) -> None:
        self._calls.pop(stream, None)
        self._stream_windows.pop(stream, None)
        if not self._calls:
            self.idle.set()

    def send_trailers_only(self, stream: int, trailers: bytes) -> None:
        block = RESPONSE_HEADERS + trailers
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
        self._finished(stream)

    def send_response(self, stream: int, data: bytes, trailers: bytes) -> None:
        head = frame(HEADERS, END_HEADERS, stream, RESPONSE_HEADERS)
        window = min(self._send_window, self._stream_windows.get(stream, 0))
        if len(data) <= window and len(data) <= self._max_frame:
            self._send_window -= len(data)
            self._write(
                head
                + frame(DATA, 0, stream, data)
                + frame(HEADERS, END_HEADERS | END_STREAM, stream, trailers)
            )
            self._finished(stream)
            return
        self._write(head)
        self._blocked[stream] = (bytearray(data), trailers)
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        """Send what the peer's windows allow of the responses waiting on them."""
        for stream in list(self._blocked):
            data, trailers = self._blocked[stream]
            window = min(self._send_window, self._stream_windows.get(stream, 0))
            while data and window > 0:
                n = min(len(data), window, self._max_frame)
                self._write(frame(DATA, 0, stream, bytes(data[:n])))
                del data[:n]
                window -= n
                self._send_window -= n
                self._stream_windows[stream] -= n
            if not data:
                del self._blocked[stream]
                self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream, trailers))
                self._finished(stream)

    def _close_call(self, call: Call) -> None:
        call.closed = True
        if call.task is not None:
            call.task.cancel()
        self._server.on_closed(call)

    def _abort(self, code: int) -> None:
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, code)))
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def go_away(self) -> None:
        """Graceful shutdown: no new streams; the open ones finish."""
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, NO_ERROR)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
