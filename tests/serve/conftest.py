"""Real ``trtops-worker serve`` processes on loopback, on ONNX Runtime with the sample models.

Servers run as subprocesses (the real CLI, signals and exit codes included) on free ports; each
fixture waits for readiness and stops its server with SIGTERM afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper
from trtops_worker import samples

from tests.support.prometheus import free_port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def infer_url(self, model: str = "conv") -> str:
        return f"{self.url}/v2/models/{model}/infer"

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of every sample called ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{"):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise

    def output(self) -> str:
        return self.log.read_text()


def start_server(tmp: Path, *args: str, wait_ready: bool = True) -> Server:
    ports = [free_port() for _ in range(3)]
    log = tmp / f"serve-{ports[0]}.log"
    cmd = [
        sys.executable,
        "-m",
        "trtops_worker",
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(process, *ports, log)
    if not wait_ready:
        return server
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{server.output()}")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    samples.save(samples.conv_classifier(width=8), d / "conv.onnx")
    samples.save(samples.conv_classifier(width=64, depth=4, image_size=64), d / "slow.onnx")
    samples.save(samples.transformer_classifier(), d / "transformer.onnx")
    # A model with a string input, for BYTES: Identity passes the strings through.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "strings.onnx"))
    return d


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The conv model with dynamic batching on; shared by the read-mostly tests."""
    s = start_server(
        tmp_path_factory.mktemp("serve"),
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--revision",
        "r1",
        "--precision",
        "fp32",
        "--max-batch-size",
        "8",
        "--max-queue-delay-us",
        "20000",
        "--max-queue-size",
        "64",
        "--max-body-bytes",
        "1000000",
    )
    yield s
    assert s.stop() == 0


def conv_input(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (rows, 3, 32, 32)).astype(np.float32)


def infer_body(x: np.ndarray, name: str = "input", **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        **extra,
    }
