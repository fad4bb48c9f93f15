"""Serving benchmark: raw ONNX Runtime vs. ``trtops-worker serve`` (batching off/on) vs. MLServer.

One run, one model, side by side:

  (a) the raw ORT session in a tight loop (batch 1 latency; best batched throughput),
  (b) this server with dynamic batching off, (c) with it on,
  (d) MLServer (its documented custom-runtime API: ``MLModel.load``/``predict`` with
      ``NumpyCodec``) wrapping the same ORT session,

each at concurrency 1 and at a saturating concurrency, driven by ``trtops-worker bench`` (HTTP,
JSON, one keep-alive connection per client) in a separate process. Prints a table and the two
target checks (c=1 p50 within 1 ms of raw; saturated throughput with batching >= 90% of raw best
batched and above the peer). A script, not a test: numbers depend on the machine.

Usage::

    python bench/serve_benchmark.py [--seconds 5] [--concurrency 32] \
        [--mlserver /tmp/peer-venv/bin/mlserver] [--json out.json]

MLServer is installed in its own venv (its pins differ from ours):
``python -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install mlserver onnxruntime``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from trtops_worker import samples

MODEL = {"width": 48, "depth": 4, "image_size": 32}
BATCHES = (1, 2, 4, 8, 16, 32)

MLSERVER_RUNTIME = textwrap.dedent(
    """
    import onnxruntime as ort
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse


    class OrtModel(MLModel):
        async def load(self) -> bool:
            self._session = ort.InferenceSession(
                self.settings.parameters.uri, providers=["CPUExecutionProvider"]
            )
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0])
            (y,) = self._session.run(None, {"input": x})
            return InferenceResponse(
                model_name=self.name, outputs=[NumpyCodec.encode_output("logits", y)]
            )
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))] * 1000


def raw_ort(model: Path, seconds: float) -> dict[str, Any]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    size = MODEL["image_size"]
    x1 = rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)
    for _ in range(20):
        session.run(None, {"input": x1})
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, {"input": x1})
        latencies.append(time.perf_counter() - t0)
    batched = {}
    for b in BATCHES:
        xb = rng.normal(0, 1, (b, 3, size, size)).astype(np.float32)
        session.run(None, {"input": xb})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            session.run(None, {"input": xb})
            n += 1
        batched[b] = n * b / (time.perf_counter() - t0)
    best = max(batched, key=lambda b: batched[b])
    return {
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "batch1_infer_per_s": len(latencies) / seconds,
        "batched_infer_per_s": batched,
        "best_batch": best,
        "best_infer_per_s": batched[best],
    }


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        ready_url = f"{url}/v2/models/conv/ready"
        with contextlib.suppress(OSError), urllib.request.urlopen(ready_url, timeout=2) as r:  # noqa: S310
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def running(cmd: list[str], url: str, log: Path, cwd: Path | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    try:
        wait_ready(url, process)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def trtops(model: Path, work: Path, batching: bool) -> tuple[list[str], str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "trtops_worker",
        "serve",
        "--model",
        str(model),
        "--model-name",
        "conv",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--max-queue-size",
        "256",
        "--log-level",
        "WARNING",
    ]
    if batching:
        cmd += ["--max-batch-size", "32", "--max-queue-delay-us", "2000"]
    return cmd, f"http://127.0.0.1:{port}"


def mlserver(binary: str, model: Path, work: Path) -> tuple[list[str], str]:
    port = free_port()
    root = work / "mlserver"
    (root / "conv").mkdir(parents=True, exist_ok=True)
    (root / "ort_runtime.py").write_text(MLSERVER_RUNTIME)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "host": "127.0.0.1",
                # Inference in the server process: MLServer 1.7.1's worker pool
                # (parallel_workers >= 1) crashes at start with uvloop 0.23
                # ("no current event loop"), so it cannot be measured.
                "parallel_workers": 0,
            }
        )
    )
    (root / "conv" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "conv",
                "implementation": "ort_runtime.OrtModel",
                "parameters": {"uri": str(model)},
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
            }
        )
    )
    return [binary, "start", str(root)], f"http://127.0.0.1:{port}"


def load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtops_worker",
            "bench",
            "--url",
            url,
            "--model",
            "conv",
            "--concurrency",
            str(concurrency),
            "--duration-seconds",
            str(seconds),
            "--warmup-seconds",
            "1",
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if "{" not in proc.stdout:
        raise RuntimeError(f"bench failed: {proc.stderr}")
    summary: dict[str, Any] = json.loads(proc.stdout[proc.stdout.index("{") :])
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="the saturating concurrency")
    parser.add_argument(
        "--mlserver",
        default=shutil.which("mlserver") or "/tmp/peer-venv/bin/mlserver",  # noqa: S108  # documented venv
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model = samples.save(samples.conv_classifier(**MODEL), work / "conv.onnx")
    print(
        f"model: samples.conv_classifier({MODEL}) input [N,3,32,32] FP32; cores: {os.cpu_count()}"
    )
    raw = raw_ort(model, args.seconds)
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    targets: list[tuple[str, list[str], str]] = [
        ("trtops batching off", *trtops(model, work, batching=False)),
        ("trtops batching on", *trtops(model, work, batching=True)),
    ]
    if Path(args.mlserver).exists():
        targets.append(("MLServer", *mlserver(args.mlserver, model, work)))
    else:
        print(f"MLServer not found at {args.mlserver}: peer skipped")
    for name, cmd, url in targets:
        with running(cmd, url, work / f"{name.replace(' ', '_')}.log", cwd=work):
            rows[name] = {c: load(url, c, args.seconds) for c in (1, args.concurrency)}

    print()
    print(
        f"{'configuration':<24} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'infer/s':>9} {'errors':>7}"
    )
    print(
        f"{'raw ORT, batch 1':<24} {1:>4} {raw['p50_ms']:>8.2f} {raw['p99_ms']:>8.2f} "
        f"{raw['batch1_infer_per_s']:>9.1f} {0:>7}"
    )
    print(
        f"{'raw ORT, best batch ' + str(raw['best_batch']):<24} {'-':>4} {'-':>8} {'-':>8} "
        f"{raw['best_infer_per_s']:>9.1f} {0:>7}"
    )
    for name, by_c in rows.items():
        for c, s in by_c.items():
            lat = s["latency_ms"]
            print(
                f"{name:<24} {c:>4} {lat['p50']:>8.2f} {lat['p99']:>8.2f} "
                f"{s['throughput_infer_per_s']:>9.1f} {sum(s['errors'].values()):>7}"
            )
    print(
        "raw ORT throughput by batch:",
        {b: round(v, 1) for b, v in raw["batched_infer_per_s"].items()},
    )

    on = rows["trtops batching on"]
    off = rows["trtops batching off"]
    c = args.concurrency
    print()
    for label, row in (("batching off", off), ("batching on", on)):
        delta = row[1]["latency_ms"]["p50"] - raw["p50_ms"]
        print(
            f"target c=1 p50 within 1 ms of raw ({label}): {delta:+.2f} ms"
            f" -> {'MET' if delta <= 1 else 'MISSED'}"
        )
    ratio = on[c]["throughput_infer_per_s"] / raw["best_infer_per_s"]
    print(
        f"target saturated throughput >= 90% of raw best batched: {ratio:.0%}"
        f" -> {'MET' if ratio >= 0.9 else 'MISSED'}"
    )
    if "MLServer" in rows:
        peer = rows["MLServer"][c]["throughput_infer_per_s"]
        ours = on[c]["throughput_infer_per_s"]
        print(
            f"target above the peer at c={c}: {ours:.1f} vs MLServer {peer:.1f}"
            f" -> {'MET' if ours > peer else 'MISSED'}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"model": MODEL, "raw": raw, "servers": rows}, indent=2, default=str)
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
