"""A real ``trtops-worker serve`` process on free loopback ports, for the tests that need one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.prometheus import free_port

__all__ = ["Server", "start_server"]


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
