"""A lean gRPC load generator: ModelInfer calls over one raw HTTP/2 connection, CONCURRENCY of
them in flight, each answered call replaced by the next (a closed loop).

``trtops-worker bench --protocol grpc`` drives calls through grpc.aio, whose own CPU per call
(~100-250 us) caps one load process near 5k calls/s: on one load core it cannot saturate the
h2 gRPC server. This sends the same request bytes with no gRPC library: one HPACK block encoded
once (the later ones are the same few indexed bytes), frames written straight to the socket.
It reads only what it needs: trailers end a call (the status is not checked; compare
``trtops_requests_total`` on the server), SETTINGS and PINGs are acknowledged, the server's DATA
is credited back in WINDOW_UPDATEs.

Usage::

    python bench/grpc_h2_load.py HOST:PORT --model M [--concurrency 128] [--seconds 5] \
        [--warmup 1] [--rows 1]

Prints calls/s over the measured window and this process's CPU (cores). Inputs: what
``trtops-worker bench`` sends (from the model's metadata, ``--rows`` rows).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from pathlib import Path

import hpack

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker")]

from trtops_worker.bench.clients import fetch_metadata, grpc_infer_request  # noqa: E402
from trtops_worker.bench.loadgen import make_inputs  # noqa: E402

_FRAME = struct.Struct(">HBBBI")


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


async def run(
    target: str, model: str, concurrency: int, seconds: float, warmup: float, rows: int
) -> None:
    meta = await fetch_metadata("grpc", target, model)
    inputs = make_inputs(meta, rows, None)
    message = grpc_infer_request(model, inputs).SerializeToString()
    body = b"\0" + len(message).to_bytes(4, "big") + message
    encoder = hpack.Encoder()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", target),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
    ]
    host, port = target.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    window = 2**31 - 1
    writer.write(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(4, 0, 0, struct.pack(">HI", 4, window))
        + _frame(8, 0, 0, struct.pack(">I", window - 65535))
    )
    next_stream = 1

    def send() -> None:
        nonlocal next_stream
        block = encoder.encode(headers)
        writer.write(_frame(1, 0x4, next_stream, block) + _frame(0, 0x1, next_stream, body))
        next_stream += 2

    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    counted, finished, credit, buffer = 0, 0, 0, b""
    for _ in range(concurrency):
        send()
    cpu_from = time.process_time()
    while finished < concurrency:
        data = await reader.read(1 << 16)
        if not data:
            raise SystemExit("the server closed the connection")
        buffer += data
        offset = 0
        while len(buffer) - offset >= 9:
            high, low, kind, flags, _ = _FRAME.unpack_from(buffer, offset)
            n = (high << 8) | low
            if len(buffer) - offset - 9 < n:
                break
            payload = buffer[offset + 9 : offset + 9 + n]
            offset += 9 + n
            if kind == 4 and not flags & 0x1:
                writer.write(_frame(4, 0x1, 0))
            elif kind == 6 and not flags & 0x1:
                writer.write(_frame(6, 0x1, 0, payload))
            elif kind == 0:
                credit += n
            elif kind == 1 and flags & 0x1:  # trailers (or trailers-only): the call is over
                now = time.perf_counter()
                if now >= measure_from and now < end:
                    if counted == 0:
                        measure_from, cpu_from = now, time.process_time()
                    counted += 1
                if now < end:
                    send()
                else:
                    finished += 1
        buffer = buffer[offset:]
        if credit > 1 << 30:
            writer.write(_frame(8, 0, 0, struct.pack(">I", credit)))
            credit = 0
    elapsed = min(time.perf_counter(), end) - measure_from
    cpu = (time.process_time() - cpu_from) / elapsed
    print(f"throughput {counted / elapsed:.1f} calls/s  client cpu {cpu:.2f} cores")
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="HOST:PORT of the gRPC server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args.target, args.model, args.concurrency, args.seconds, args.warmup, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
