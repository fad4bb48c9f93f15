"""``trtops-worker bench`` against the real server, over both protocols."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import Server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bench_reports_percentiles_and_errors_as_json(
    server: Server, tmp_path: Path, protocol: str
) -> None:
    url = server.url if protocol == "http" else server.grpc
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtops_worker",
            "bench",
            "--url",
            url,
            "--protocol",
            protocol,
            "--model",
            "conv",
            "--concurrency",
            "4",
            "--duration-seconds",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "p99=" in proc.stdout
    summary = json.loads(out.read_text())
    assert summary["successes"] > 0
    assert summary["errors"] == {}
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p95", "p99"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_bench_rate_mode_with_an_input_file_and_error_counts(
    server: Server, tmp_path: Path
) -> None:
    npz = tmp_path / "inputs.npz"
    np.savez(npz, input=np.zeros((4, 3, 32, 32), np.float32))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtops_worker",
            "bench",
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
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert 40 <= summary["requests"] <= 51
    assert summary["throughput_infer_per_s"] == pytest.approx(
        2 * summary["throughput_rps"], rel=0.01
    )

    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtops_worker",
            "bench",
            "--url",
            server.url,
            "--model",
            "nope",
            "--concurrency",
            "1",
            "--duration-seconds",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode != 0
