"""HTTP/2 and gRPC wire pieces for serve/grpc_h2.py: frame and flag numbers (RFC 9113), the
HPACK literals our responses use (RFC 7541, never indexed: the client's table never changes), and
gRPC's status trailers and ``grpc-timeout`` (gRPC's PROTOCOL-HTTP2 document)."""

from __future__ import annotations

import contextlib
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x3, 0x7, 0x8
COMPRESSION_ERROR = 0x9
MAX_WINDOW = 2**31 - 1
OUR_MAX_FRAME = 2**24 - 1
FRAME = struct.Struct(">HBBBI")  # 24-bit length as 16+8 bits, type, flags, stream id
# Our receive windows start (nearly) unbounded, so a client never waits for WINDOW_UPDATEs
# on a request; the connection's is topped up once half of it has been used.
# A client keeps at most MAX_STREAMS calls open on one connection (grpc's clients queue the
# rest); a stream past it is refused, so calls never sent in full cannot pile up.
MAX_STREAMS = 1024
# A connection whose client has not acknowledged our SETTINGS by then is closed (grpc.aio closes
# one that never finishes its handshake too), so silent connections cannot pile up.
HANDSHAKE_S = 10.0
# A header block (HEADERS + CONTINUATIONs) past this ends its connection: it is stored until
# END_HEADERS, and hpack's decoder refuses a header list past 64 KiB anyway.
MAX_HEADER_BLOCK = 1 << 18
OUR_SETTINGS = struct.pack(">HIHIHI", 0x3, MAX_STREAMS, 0x4, MAX_WINDOW, 0x5, OUR_MAX_FRAME)
# Response header blocks: literal fields without indexing (the peer's table never changes).
RESPONSE_HEADERS = b"\x88\x0f\x10\x10application/grpc"  # :status 200, content-type


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with ``first``'s high bits in its first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def grpc_message(details: str) -> bytes:
    """``grpc-message``'s percent-encoding (gRPC's HTTP/2 protocol document)."""
    out = bytearray()
    for b in details.encode():
        out += b"%%%02X" % b if b < 0x20 or b > 0x7E or b == 0x25 else bytes((b,))
    return bytes(out)


def trailers(code: int, details: str, metadata: tuple[tuple[str, str], ...]) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if details:  # capped: the block must fit one frame of the peer's smallest (16 KiB)
        block += literal(b"grpc-message", grpc_message(details[:2048]))
    for key, value in metadata:
        block += literal(key.lower().encode(), value.encode())
    return block


OK_TRAILERS = trailers(0, "", ())


def timeout_s(value: str) -> float | None:
    """``grpc-timeout`` (e.g. '100m', '5S') in seconds; None when unreadable."""
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    with contextlib.suppress(ValueError, KeyError, IndexError):
        return int(value[:-1]) * units[value[-1]]
    return None
