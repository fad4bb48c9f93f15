"""CPU fallback when the TensorRT device fails *while serving* (fallback at load: test_lifecycle).

TensorRT and CUDA cannot run on the machines these tests run on, so the failing device is a test
double: :class:`DyingDevice` answers like a TensorRT backend (name ``tensorrt``) by running the
real ONNX Runtime session, until its N-th batch, from which on it raises :class:`DeviceError` as
``backend_tensorrt`` does for a CUDA/TensorRT failure. Everything else is the real server: data
plane, batcher, HTTP and gRPC listeners and metrics on loopback, in this process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from trtops_worker.serve.backend import LoadedBackend
from trtops_worker.serve.backend_onnxruntime import OnnxRuntimeBackend
from trtops_worker.serve.dataplane import DataPlane, ServeConfig
from trtops_worker.serve.errors import DeviceError
from trtops_worker.serve.metrics import Labels, ServeMetrics
from trtops_worker.serve.server import ServerOptions, ServingProcess

from tests.support.prometheus import free_port

from .conftest import conv_input, infer_body
from .test_rest import reference

WARMUP_BATCHES = 2  # the data plane warms up with batch 1 and the max batch


class DyingDevice:
    """A "TensorRT" backend whose device dies after ``healthy_batches`` batches (test double)."""

    name = "tensorrt"
    platform = "tensorrt_plan"
    max_concurrent_runs = 1

    def __init__(self, model: Path, healthy_batches: int) -> None:
        self._inner = OnnxRuntimeBackend(model, intra_op_threads=1)
        self.inputs, self.outputs = self._inner.inputs, self._inner.outputs
        self._healthy = healthy_batches
        self._lock = threading.Lock()
        self.batches = 0
        self.failed_rows: list[int] = []
        self.closed = False

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.batches += 1
            if self.batches > self._healthy:
                self.failed_rows.append(len(next(iter(inputs.values()))))
                raise DeviceError("cudaStreamSynchronize failed: CUDA error 700 (illegal address)")
        return self._inner.infer(inputs)

    def close(self) -> None:
        self.closed = True
        self._inner.close()


@dataclass
class Running:
    http_port: int
    metrics_port: int
    device: DyingDevice

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def infer_url(self) -> str:
        return f"{self.url}/v2/models/conv/infer"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of every sample called ``name`` whose labels include ``labels``."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


async def serve(model_dir: Path, *, cpu_fallback: bool) -> AsyncIterator[Running]:
    device = DyingDevice(model_dir / "conv.onnx", healthy_batches=WARMUP_BATCHES + 3)
    config = ServeConfig(
        model_name="conv",
        revision="r3",
        precision="fp16",
        requested_backend="tensorrt",
        fallback_model=model_dir / "conv.onnx",
        cpu_fallback=cpu_fallback,
        max_batch_size=8,
        max_queue_delay_us=5000,
        intra_op_threads=1,
    )
    metrics = ServeMetrics(Labels("conv", "r3", "fp16", "tensorrt"))
    plane = DataPlane(config, LoadedBackend(device), metrics)
    options = ServerOptions(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=free_port())
    process = ServingProcess(plane, options)
    task = asyncio.create_task(process.run())
    for _ in range(600):
        if plane.ready or task.done():
            break
        await asyncio.sleep(0.05)
    if task.done():
        await task
    assert plane.ready
    try:
        yield Running(process.http_port, options.metrics_port, device)
    finally:
        process.request_stop()
        await task


@pytest.fixture
async def with_fallback(model_dir: Path) -> AsyncIterator[Running]:
    async for running in serve(model_dir, cpu_fallback=True):
        yield running


@pytest.fixture
async def without_fallback(model_dir: Path) -> AsyncIterator[Running]:
    async for running in serve(model_dir, cpu_fallback=False):
        yield running


def post_all(server: Running, inputs: list[np.ndarray]) -> list[requests.Response]:
    def send(x: np.ndarray) -> requests.Response:
        return requests.post(server.infer_url(), json=infer_body(x), timeout=30)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, inputs))


async def test_device_failure_while_serving_switches_to_onnxruntime_without_failing_requests(
    with_fallback: Running, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s, device = with_fallback, with_fallback.device
    inputs = [conv_input(1 + i % 3, seed=i) for i in range(40)]
    with caplog.at_level(logging.ERROR, logger="trtops_worker.serve.dataplane"):
        responses = await asyncio.to_thread(post_all, s, inputs)

    # every request succeeded with the right answer, the ones in the failed batch included
    assert [r.status_code for r in responses] == [200] * len(inputs), [r.text for r in responses]
    for x, r in zip(inputs, responses, strict=True):
        out = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(len(x), 10)
        np.testing.assert_allclose(out, reference(model_dir, x), rtol=1e-5, atol=1e-5)
    assert len(device.failed_rows) == 1, "the dead device was called again after the switch"
    assert device.closed

    meta = await asyncio.to_thread(
        lambda: requests.get(f"{s.url}/v2/models/conv", timeout=5).json()
    )
    assert meta["platform"] == "onnxruntime_onnx"
    params = meta["parameters"]
    assert (params["backend"], params["requested_backend"], params["fallback"]) == (
        "onnxruntime",
        "tensorrt",
        True,
    )
    assert "failed while serving" in params["fallback_reason"]
    assert "CUDA error 700" in params["fallback_reason"]

    on_cpu = {"model": "conv", "revision": "r3", "precision": "fp16", "backend": "onnxruntime"}
    on_gpu = {**on_cpu, "backend": "tensorrt"}
    metric = s.metric
    assert await asyncio.to_thread(metric, "trtops_backend_fallback", **on_cpu) == 1
    assert await asyncio.to_thread(metric, "trtops_backend_fallback", **on_gpu) == 0
    errors = await asyncio.to_thread(metric, "trtops_requests_total", outcome="server_error")
    assert errors == 0
    assert any("falling back to ONNX Runtime" in r.getMessage() for r in caplog.records)


async def test_device_failure_without_fallback_fails_that_batch_and_keeps_the_backend(
    without_fallback: Running,
) -> None:
    s, device = without_fallback, without_fallback.device

    def one_by_one() -> list[requests.Response]:
        return [
            requests.post(s.infer_url(), json=infer_body(conv_input(1, seed=i)), timeout=30)
            for i in range(5)
        ]

    responses = await asyncio.to_thread(one_by_one)
    # three healthy batches, then every batch fails: nothing to fall back to
    assert [r.status_code for r in responses] == [200, 200, 200, 500, 500]
    assert all("CUDA error 700" in r.json()["error"] for r in responses[3:])
    meta = await asyncio.to_thread(
        lambda: requests.get(f"{s.url}/v2/models/conv", timeout=5).json()
    )
    assert meta["parameters"]["backend"] == "tensorrt"
    assert meta["parameters"]["fallback"] is False
    assert not device.closed
