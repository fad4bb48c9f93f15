"""The data plane's CPU per request with no network: the HTTP handler (``rest.create_handler``)
called in process by ``--concurrency`` coroutines on one event loop, binary requests of one
row, a one-thread ONNX Runtime instance, dynamic batching on.

Prints requests/s, the process's CPU per request and the same minus the inference CPU the
server counts (``trtops_compute_cpu_seconds_total``): what the data plane itself costs, i.e.
the floor under every transport's serving CPU. ``--multiprocess`` puts prometheus_client in
its multiprocess mode, as a pod with several front ends runs. ``--http11`` sends each request
as HTTP/1.1 bytes through the HTTP listener's connection protocol (serve/http11.py) with a
transport that hands the answer straight back: the listener's parsing and answering on top,
still no socket. Run it from two checkouts (``PYTHONPATH=<checkout>/worker``) to compare
revisions; alternate them.

Usage::

    python bench/dataplane_cpu.py [--model tiny|conv] [--concurrency 32] [--requests 20000] \
        [--multiprocess] [--http11]

A script, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {"tiny": {"width": 4, "depth": 1}, "conv": {"width": 48, "depth": 4}}


class _Transport:
    """Enough of an asyncio transport for http11's connection: an answer resolves ``waiter``."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(model: Path, concurrency: int, requests: int, http11: bool) -> None:
    from trtops_worker.serve.backend import load_backend
    from trtops_worker.serve.dataplane import DataPlane, ServeConfig
    from trtops_worker.serve.metrics import Labels, ServeMetrics
    from trtops_worker.serve.rest import create_handler

    loaded = load_backend("onnxruntime", model, intra_op_threads=1, spinning=False, sessions=1)
    config = ServeConfig(
        model_name="conv",
        max_batch_size=32,
        max_queue_delay_us=2000,
        max_queue_size=1024,
        intra_op_threads=1,
        instances=1,
    )
    x = np.zeros((1, 3, 32, 32), np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, 32, 32],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ]
        }
    ).encode()
    body = head + x
    headers = {
        b"content-type": b"application/octet-stream",
        b"inference-header-content-length": str(len(head)).encode(),
        b"content-length": str(len(body)).encode(),
    }
    metrics = ServeMetrics(Labels("conv", "", "", loaded.backend.name))
    dataplane = DataPlane(config, loaded, metrics)
    await dataplane.start()
    handle = create_handler(dataplane, max_body_bytes=1 << 24)

    async def read(limit: int) -> bytes:
        return body

    def inference_cpu() -> float:
        getattr(metrics, "flush", lambda: None)()  # older revisions had no buffer
        return sum(
            sample.value
            for family in metrics.compute_cpu.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    raw = b"POST /v2/models/conv/infer HTTP/1.1\r\nhost: bench\r\n"
    raw += b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
    raw += b"\r\n" + body

    async def over_http11() -> None:
        from trtops_worker.serve.http11 import HttpOptions, _Connection, _Listener

        nonlocal done
        transport = _Transport()
        connection = _Connection(_Listener(handle, HttpOptions(max_body_bytes=1 << 24)))
        connection.connection_made(transport)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        while done < requests:
            transport.waiter = loop.create_future()
            connection.data_received(raw)
            answer = await transport.waiter
            if not answer.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(answer[:200].decode(errors="replace"))
            done += 1

    for label in ("warm-up", "measured"):
        done = 0

        async def client() -> None:
            nonlocal done
            if http11:
                return await over_http11()
            while done < requests:
                status, _, answer = await handle("POST", "/v2/models/conv/infer", headers.get, read)
                if status != 200:
                    raise RuntimeError(f"{status}: {answer[:200]!r}")
                done += 1

        cpu, inference, started = time.process_time(), inference_cpu(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        cpu = time.process_time() - cpu
        inference = inference_cpu() - inference
        seconds = time.perf_counter() - started
        print(
            f"{label}: c={concurrency} {done / seconds:.0f} requests/s, CPU"
            f" {1e6 * cpu / done:.1f} us/request, outside inference"
            f" {1e6 * (cpu - inference) / done:.1f} us/request"
        )
    await dataplane.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--multiprocess", action="store_true")
    parser.add_argument("--http11", action="store_true", help="through serve/http11.py's protocol")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dataplane-cpu-"))
    if args.multiprocess:  # before prometheus_client is first imported
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work)
    import uvloop
    from trtops_worker import samples

    model = samples.save(samples.conv_classifier(**MODELS[args.model]), work / "model.onnx")
    uvloop.run(measure(model, args.concurrency, args.requests, args.http11))


if __name__ == "__main__":
    main()
