"""``trtops-worker bench`` against the real server, over both protocols."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import Server


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``trtops-worker bench`` with ``args`` in a child process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "trtops_worker", "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("protocol", ["http", "http-binary", "grpc"])
def test_bench_reports_percentiles_and_errors_as_json(
    server: Server, tmp_path: Path, protocol: str
) -> None:
    """Each wire format is accepted by the server: any 4xx would show up under ``errors``."""
    url = server.grpc if protocol == "grpc" else server.url
    binary = ["--binary-data"] if protocol == "http-binary" else []
    out = tmp_path / "result.json"
    before = server.metric("trtops_requests_total", outcome="success")
    proc = _bench(
        "--url",
        url,
        "--protocol",
        protocol.removesuffix("-binary"),
        *binary,
        "--model",
        "conv",
        "--concurrency",
        "4",
        "--duration-seconds",
        "1",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "p99=" in proc.stdout
    summary = json.loads(out.read_text())
    assert summary["successes"] > 0
    assert summary["errors"] == {}
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p95", "p99"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["binary_data"] is (protocol == "http-binary")
    assert "(binary data)" in proc.stdout if binary else "(binary data)" not in proc.stdout
    # every request the bench sent reached the model (warm-up is 0 s here)
    served = server.metric("trtops_requests_total", outcome="success") - before
    assert served >= summary["successes"]


def test_bench_rate_mode_with_an_input_file_and_error_counts(
    server: Server, tmp_path: Path
) -> None:
    npz = tmp_path / "inputs.npz"
    np.savez(npz, input=np.zeros((4, 3, 32, 32), np.float32))
    proc = _bench(
        "--url",
        server.url,
        "--model",
        "conv",
        "--rate",
        "50",
        "--duration-seconds",
        "1",
        "--input-file",
        str(npz),
        "--batch-size",
        "2",
        "--json",
        "-",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert 40 <= summary["requests"] <= 51
    assert summary["throughput_infer_per_s"] == pytest.approx(
        2 * summary["throughput_rps"], rel=0.01
    )

    wrong = _bench(
        "--url",
        server.url,
        "--model",
        "nope",
        "--concurrency",
        "1",
        "--duration-seconds",
        "0.2",
    )
    assert wrong.returncode != 0


def test_binary_request_body_decodes_to_the_same_tensors_and_asks_for_binary_outputs() -> None:
    from trtops_worker.bench.clients import http_infer_body
    from trtops_worker.serve.codec import decode_json_request
    from trtops_worker.serve.types import TensorSpec

    x = np.random.default_rng(1).normal(0, 1, (2, 3, 4)).astype(np.float32)
    ids = np.array([[7], [9]], np.int64)
    specs = [TensorSpec("x", "FP32", (-1, 3, 4)), TensorSpec("ids", "INT64", (-1, 1))]
    body, header_length = http_infer_body({"x": x, "ids": ids}, binary=True)
    assert 0 < header_length < len(body)
    request = decode_json_request(
        json.loads(body[:header_length]), specs, ["y"], body[header_length:]
    )
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert request.binary_outputs == {"y"}

    text, no_header = http_infer_body({"x": x, "ids": ids})
    assert no_header == 0
    decoded = decode_json_request(json.loads(text), specs, ["y"])
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert decoded.binary_outputs == frozenset()


class _CountingProxy:
    """A TCP proxy to ``target`` ("host:port") that counts the connections it accepted: how
    many connections a client really opened."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        self.connections = 0
        self._target = target.rsplit(":", 1)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection((self._target[0], int(self._target[1])))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: object, sink: object) -> None:
        import socket

        assert isinstance(source, socket.socket)
        assert isinstance(sink, socket.socket)
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def close(self) -> None:
        self._listener.close()


@pytest.mark.parametrize(("flags", "connections"), [([], 4), (["--one-connection"], 1)])
def test_bench_grpc_workers_have_a_connection_each_unless_told_to_share_one(
    server: Server, flags: list[str], connections: int
) -> None:
    """An application with one gRPC channel sends everything over one connection, and one
    connection reaches one of a pod's front ends: ``--one-connection`` loads a server that way
    (the benchmark's "gRPC 1 conn" wire); by default each worker has its own, as the load
    spreads over front ends."""
    proxy = _CountingProxy(server.grpc)
    try:
        proc = _bench(
            *("--url", proxy.address),
            *("--protocol", "grpc", *flags, "--model", "conv", "--concurrency", "4"),
            *("--duration-seconds", "1", "--json", "-"),
        )
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["successes"] > 0
    assert summary["errors"] == {}
    assert summary["one_connection"] is (connections == 1)
    # the metadata request opens one more connection first
    assert proxy.connections - 1 == connections


@pytest.mark.parametrize("reachable", [True, False])
def test_bench_refuses_one_connection_over_http(server: Server, reachable: bool) -> None:
    """A flag error, said before any connection (a server down must not hide it)."""
    url = server.url if reachable else "http://127.0.0.1:1"
    proc = _bench(
        *("--url", url),
        *("--one-connection", "--model", "conv", "--duration-seconds", "1"),
    )
    assert proc.returncode == 2
    assert "--one-connection is for gRPC" in proc.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ["--concurrency", "0"],
        ["--concurrency", "-3"],
        ["--rate", "-5"],
        ["--rate", "5", "--max-connections", "0"],
    ],
)
def test_bench_refuses_a_load_of_no_workers(flags: list[str]) -> None:
    """A flag error before any connection (it ran one gRPC worker, or no HTTP one and printed
    a table of 0 requests)."""
    proc = _bench(
        *("--url", "http://127.0.0.1:1"),
        *("--model", "conv", "--duration-seconds", "1", *flags),
    )
    assert proc.returncode == 2, proc.stderr
    assert "must be" in proc.stderr


def test_bench_over_http_at_a_grpc_port_says_so(server: Server) -> None:
    """The gRPC port answers HTTP/1.1 with HTTP/2 frames: the reason, not those bytes."""
    proc = _bench(
        *("--url", f"http://{server.grpc}"),
        *("--model", "conv", "--duration-seconds", "1"),
    )
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"bench: metadata: http://{server.grpc} did not answer HTTP/1.1 (a gRPC port?)\n"
    )


@pytest.mark.parametrize("model", ["conv", "nosuch"])
def test_bench_over_grpc_says_why_it_cannot_start_in_one_line(server: Server, model: str) -> None:
    """No server there, or no such model: a one-line reason and exit 1, as over HTTP (it was a
    Python traceback)."""
    url = "127.0.0.1:1" if model == "conv" else server.grpc
    proc = _bench(
        *("--url", url, "--protocol", "grpc"),
        *("--model", model, "--duration-seconds", "1"),
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    expected = "UNAVAILABLE" if model == "conv" else "NOT_FOUND"
    assert proc.stderr.startswith(f"bench: metadata: {expected}: "), proc.stderr
