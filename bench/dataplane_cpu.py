"""The data plane's CPU per request with no network: the HTTP handler (``rest.create_handler``)
called in process by ``--concurrency`` coroutines on one event loop, binary requests of one
row, a one-thread ONNX Runtime instance, dynamic batching on.

Prints requests/s, the process's CPU per request and the same minus the inference CPU the
server counts (``trtops_compute_cpu_seconds_total``): what the data plane itself costs, i.e.
the floor under every transport's serving CPU. ``--multiprocess`` puts prometheus_client in
its multiprocess mode, as a pod with several front ends runs. Run it from two checkouts
(``PYTHONPATH=<checkout>/worker``) to compare revisions; alternate them.

Usage::

    python bench/dataplane_cpu.py [--model tiny|conv] [--concurrency 32] [--requests 20000] \
        [--multiprocess]

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


async def measure(model: Path, concurrency: int, requests: int) -> None:
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

    for label in ("warm-up", "measured"):
        done = 0

        async def client() -> None:
            nonlocal done
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dataplane-cpu-"))
    if args.multiprocess:  # before prometheus_client is first imported
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work)
    import uvloop
    from trtops_worker import samples

    model = samples.save(samples.conv_classifier(**MODELS[args.model]), work / "model.onnx")
    uvloop.run(measure(model, args.concurrency, args.requests))


if __name__ == "__main__":
    main()
