"""The load loop: closed (fixed concurrency) or open (fixed rate), bounded in time and count.

Closed loop: N workers, each with its own connection, send back to back. Open loop: a ticker
releases requests every ``1/rate`` s to the same worker pool; latency is measured from the due
time, so a slow server is not hidden by a client that waits (coordinated omission). A request due
while every worker is busy is counted as ``not_sent`` rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from .clients import (
    BenchClient,
    GrpcClient,
    HttpClient,
    RequestFailed,
    fetch_metadata,
    grpc_target,
    http_infer_body,
)
from .stats import BenchResult

__all__ = ["make_inputs", "run_load"]

_NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def make_inputs(
    metadata: dict[str, Any],
    batch_size: int,
    npz: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One request's inputs: rows from ``npz`` if given, else random data of the model's spec."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in metadata["inputs"]:
        name, datatype = spec["name"], spec["datatype"]
        if npz is not None:
            if name not in npz:
                raise ValueError(f"input file has no array '{name}' (has {sorted(npz)})")
            out[name] = np.asarray(npz[name][:batch_size])
            continue
        shape = [
            batch_size if i == 0 and d == -1 else (1 if d == -1 else d)
            for i, d in enumerate(spec["shape"])
        ]
        if datatype == "BYTES":
            out[name] = np.full(shape, "x", dtype=np.object_)
        elif datatype.startswith("FP"):
            out[name] = rng.normal(0, 1, shape).astype(_NUMPY[datatype])
        else:
            out[name] = rng.integers(0, 64, shape).astype(_NUMPY[datatype])
    return out


async def run_load(
    *,
    url: str,
    model: str,
    protocol: str = "http",
    binary_data: bool = False,
    concurrency: int = 1,
    rate: float | None = None,
    duration_s: float = 10.0,
    warmup_s: float = 0.0,
    batch_size: int = 1,
    max_requests: int = 10_000_000,
    inputs: dict[str, np.ndarray] | None = None,
    npz: dict[str, np.ndarray] | None = None,
    one_connection: bool = False,
) -> BenchResult:
    if inputs is None:
        meta = await fetch_metadata(protocol, url, model)
        inputs = make_inputs(meta, batch_size, npz)
    clients: list[BenchClient]
    if protocol == "grpc":
        target = grpc_target(url)
        first = GrpcClient(target, model, inputs)
        share = first if one_connection else None
        clients = [
            first,
            *(GrpcClient(target, model, inputs, share) for _ in range(concurrency - 1)),
        ]
    else:
        if one_connection:
            raise ValueError("--one-connection is for gRPC (HTTP/1.1 sends one request at a time)")
        body, header_length = http_infer_body(inputs, binary=binary_data)
        clients = [HttpClient(url, model, body, header_length) for _ in range(concurrency)]
    result = BenchResult(protocol, url, model, concurrency, rate, batch_size, 0.0)
    result.binary_data = binary_data and protocol == "http"
    result.one_connection = one_connection and protocol == "grpc"
    start = time.perf_counter()
    measure_from = start + warmup_s
    end = measure_from + duration_s
    sent = 0
    due: asyncio.Queue[float] = asyncio.Queue(maxsize=concurrency)
    # The generator's own CPU over the measured window: near one core, it is the bottleneck.
    cpu_from = [time.process_time()]
    timer = asyncio.get_running_loop().call_later(
        warmup_s, lambda: cpu_from.__setitem__(0, time.process_time())
    )

    async def one(client: BenchClient, t0: float) -> None:
        try:
            await client.infer()
        except RequestFailed as e:
            if t0 >= measure_from:
                result.errors[e.kind] += 1
            if e.kind == "connection":
                await asyncio.sleep(0.01)  # do not spin on a refused connection
            return
        if t0 >= measure_from:
            result.latencies_s.append(time.perf_counter() - t0)

    async def closed_worker(client: BenchClient) -> None:
        nonlocal sent
        while time.perf_counter() < end and sent < max_requests:
            sent += 1
            await one(client, time.perf_counter())

    async def open_worker(client: BenchClient) -> None:
        while True:
            t0 = await due.get()
            if t0 < 0:
                return
            await one(client, t0)

    async def ticker(interval: float) -> None:
        nonlocal sent
        next_due = start
        while next_due < end and sent < max_requests:
            delay = next_due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                due.put_nowait(next_due)
                sent += 1
            except asyncio.QueueFull:
                if next_due >= measure_from:
                    result.not_sent += 1
            next_due += interval

    try:
        if rate:
            workers = [asyncio.create_task(open_worker(c)) for c in clients]
            await ticker(1.0 / rate)
            for _ in workers:
                await due.put(-1.0)
            await asyncio.gather(*workers)
        else:
            await asyncio.gather(*(closed_worker(c) for c in clients))
    finally:
        # the last requests finish after `end`: measure the window they actually took
        result.duration_seconds = max(1e-9, time.perf_counter() - measure_from)
        result.cpu_seconds = time.process_time() - cpu_from[0]
        timer.cancel()
        for c in clients:
            await c.close()
    return result
