"""Serving benchmark: raw ONNX Runtime vs. ``trtops-worker serve`` (batching off/on) vs. MLServer.

One run, one model, side by side:

  (a) the raw ORT session in a tight loop, under every session configuration the server can use
      (ORT's defaults; the server's options; two runs at once with one thread each): batch 1
      latency and throughput at each batch size. The baseline is the best of all of them.
  (b) this server with dynamic batching off, (c) with it on (and (c') with two batches running
      at once, ``--instances 2``),
  (d) MLServer (its documented custom-runtime API: ``MLModel.load``/``predict`` with
      ``NumpyCodec``) wrapping the same ORT session,

each at concurrency 1 and at a saturating concurrency, driven by ``trtops-worker bench`` in a
separate process over each wire format: HTTP/JSON, HTTP with the binary tensor data extension
(what ``tritonclient.http`` sends), and gRPC with ``raw_input_contents``. Peers are measured on
the formats they accept. Besides latency and throughput it prints where the CPU went: the
server's cores, its event-loop thread's CPU per request, and the load generator's cores.
Then the target checks (c=1 p50 within 1 ms of raw; saturated throughput with batching >= 90%
of raw best batched and above every peer). A script, not a test: numbers depend on the machine.

Usage::

    python bench/serve_benchmark.py [--seconds 4] [--concurrency 32] \
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
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RawConfig:
    label: str
    intra_op_threads: int  # 0: one per core
    spinning: bool
    parallel: int  # session.run calls at once, each from its own thread


RAW_CONFIGS = (
    RawConfig("ORT defaults (threads per core, spinning)", 0, True, 1),
    RawConfig("server options (threads per core, no spinning)", 0, False, 1),
    RawConfig("2 runs at once, 1 thread each", 1, False, 2),
)


def throughput(
    session: ort.InferenceSession, x: np.ndarray, parallel: int, seconds: float
) -> float:
    """Rows per second with ``parallel`` threads calling ``session.run`` back to back."""
    counts = [0] * parallel
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, {"input": x})
            counts[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) * len(x) / (time.perf_counter() - t0)


def raw_ort(model: Path, seconds: float, config: RawConfig) -> dict[str, Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if config.spinning else "0"
    )
    session = ort.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    size = MODEL["image_size"]
    x1 = rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)
    for _ in range(20):
        session.run(None, {"input": x1})
    latencies = []
    end = time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, {"input": x1})
        latencies.append(time.perf_counter() - t0)
    batched = {}
    for b in BATCHES:
        xb = rng.normal(0, 1, (b, 3, size, size)).astype(np.float32)
        session.run(None, {"input": xb})
        batched[b] = throughput(session, xb, config.parallel, seconds / 4)
    best = max(batched, key=lambda b: batched[b])
    return {
        "label": config.label,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "batch1_infer_per_s": len(latencies) / (seconds / 2),
        "batched_infer_per_s": batched,
        "best_batch": best,
        "best_infer_per_s": batched[best],
    }


def cpu_seconds(pid: int) -> tuple[float, float]:
    """``(main thread, whole process)`` CPU seconds; the main thread runs the event loop."""
    tick = os.sysconf("SC_CLK_TCK")

    def read(path: str) -> float:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        return read(f"/proc/{pid}/task/{pid}/stat"), read(f"/proc/{pid}/stat")
    except OSError:
        return 0.0, 0.0


class CpuSampler:
    """Samples a server's CPU while a load runs, to rate it over the load's measured window."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.monotonic(), *cpu_seconds(self._pid)))

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, start: float, end: float) -> tuple[float, float]:
        """``(main-thread cores, process cores)`` between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0, 0.0
        (t0, m0, p0), (t1, m1, p1) = inside[0], inside[-1]
        return (m1 - m0) / (t1 - t0), (p1 - p0) / (t1 - t0)


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
def running(
    cmd: list[str], url: str, log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    try:
        wait_ready(url, process)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@dataclass(frozen=True)
class Target:
    name: str
    cmd: list[str]
    url: str  # HTTP
    grpc: str  # host:port
    wires: tuple[str, ...]  # the wire formats it accepts, from WIRES


# wire format -> trtops-worker bench flags
WIRES = {
    "JSON": ["--protocol", "http"],
    "binary": ["--protocol", "http", "--binary-data"],
    "gRPC": ["--protocol", "grpc"],
}


def trtops(model: Path, name: str, extra: list[str]) -> Target:
    port, grpc_port = free_port(), free_port()
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
        str(grpc_port),
        "--metrics-port",
        str(free_port()),
        "--max-queue-size",
        "256",
        "--log-level",
        "WARNING",
        *extra,
    ]
    return Target(name, cmd, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", tuple(WIRES))


def mlserver(binary: str, model: Path, work: Path) -> Target:
    port, grpc_port = free_port(), free_port()
    root = work / "mlserver"
    (root / "conv").mkdir(parents=True, exist_ok=True)
    (root / "ort_runtime.py").write_text(MLSERVER_RUNTIME)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": grpc_port,
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
    # MLServer 1.7.1 has no binary tensor data extension on REST: JSON and gRPC only.
    return Target(
        "MLServer 1.7.1",
        [binary, "start", str(root)],
        f"http://127.0.0.1:{port}",
        f"127.0.0.1:{grpc_port}",
        ("JSON", "gRPC"),
    )


def load(
    target: Target, wire: str, concurrency: int, seconds: float, sampler: CpuSampler
) -> dict[str, Any]:
    url = target.grpc if wire == "gRPC" else target.url
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtops_worker",
            "bench",
            "--url",
            url,
            *WIRES[wire],
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
    ended = time.monotonic()
    if "{" not in proc.stdout:
        raise RuntimeError(f"bench failed: {proc.stderr}")
    summary: dict[str, Any] = json.loads(proc.stdout[proc.stdout.index("{") :])
    loop_cores, server_cores = sampler.rate(ended - summary["duration_seconds"], ended)
    rps = summary["throughput_rps"]
    summary["server_cores"] = round(server_cores, 2)
    summary["loop_us_per_request"] = round(loop_cores / rps * 1e6) if rps else None
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32, help="the saturating concurrency")
    parser.add_argument(
        "--mlserver",
        default=shutil.which("mlserver") or "/tmp/peer-venv/bin/mlserver",  # noqa: S108  # documented venv
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model = samples.save(samples.conv_classifier(**MODEL), work / "conv.onnx")
    with open("/proc/loadavg") as f:
        loadavg = " ".join(f.read().split()[:3])
    print(
        f"model: samples.conv_classifier({MODEL}) input [N,3,32,32] FP32; "
        f"cores: {os.cpu_count()}; load average at start: {loadavg}"
    )
    raws = [raw_ort(model, args.seconds, config) for config in RAW_CONFIGS]
    raw_best = max(raws, key=lambda r: r["best_infer_per_s"])
    raw_p50 = min(r["p50_ms"] for r in raws if r["label"] != RAW_CONFIGS[-1].label)
    batching = ["--max-batch-size", "32", "--max-queue-delay-us", "2000"]
    targets = [
        trtops(model, "trtops, batching off", []),
        trtops(model, "trtops, batching on", batching),
        trtops(model, "trtops, batching on, 2 instances", [*batching, "--instances", "2"]),
    ]
    if Path(args.mlserver).exists():
        targets.append(mlserver(args.mlserver, model, work))
    else:
        print(f"MLServer not found at {args.mlserver}: peer skipped")
    c = args.concurrency
    rows: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for target in targets:
        log = work / f"{target.name.replace(' ', '_').replace(',', '')}.log"
        with (
            running(target.cmd, target.url, log, cwd=work) as process,
            CpuSampler(process.pid) as sampler,
        ):
            rows[target.name] = {
                wire: {n: load(target, wire, n, args.seconds, sampler) for n in (1, c)}
                for wire in target.wires
            }

    print()
    print(
        f"{'configuration':<46} {'wire':<6} {'conc':>4} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'infer/s':>8} {'err':>4} {'srv cores':>9} {'loop us/req':>11} {'client cores':>12}"
    )
    for r in raws:
        if r["label"] != RAW_CONFIGS[-1].label:
            print(
                f"{'raw ORT, batch 1: ' + r['label']:<46} {'-':<6} {1:>4} {r['p50_ms']:>7.2f} "
                f"{r['p99_ms']:>7.2f} {r['batch1_infer_per_s']:>8.1f} {0:>4}"
            )
    for r in raws:
        label = f"raw ORT, batch {r['best_batch']}: {r['label']}"
        dashes = f"{'-':<6} {'-':>4} {'-':>7} {'-':>7}"
        print(f"{label:<46} {dashes} {r['best_infer_per_s']:>8.1f} {0:>4}")
    for name, by_wire in rows.items():
        for wire, by_c in by_wire.items():
            for n, s in by_c.items():
                lat = s["latency_ms"]
                loop_us = s["loop_us_per_request"]
                print(
                    f"{name:<46} {wire:<6} {n:>4} {lat['p50']:>7.2f} {lat['p99']:>7.2f} "
                    f"{s['throughput_infer_per_s']:>8.1f} {sum(s['errors'].values()):>4} "
                    f"{s['server_cores']:>9.2f} {loop_us if loop_us is not None else '-':>11} "
                    f"{s['client_cpu_cores']:>12.2f}"
                )
    for r in raws:
        print(
            f"raw ORT by batch, {r['label']}:",
            {b: round(v, 1) for b, v in r["batched_infer_per_s"].items()},
        )

    print()
    trtops_rows = {name: w for name, w in rows.items() if name.startswith("trtops")}
    for name, by_wire in trtops_rows.items():
        for wire, by_c in by_wire.items():
            delta = by_c[1]["latency_ms"]["p50"] - raw_p50
            print(
                f"target c=1 p50 within 1 ms of raw ({name}, {wire}): {delta:+.2f} ms"
                f" -> {'MET' if delta <= 1 else 'MISSED'}"
            )
    best_name, best_wire, ours = max(
        (
            (name, wire, by_c[c]["throughput_infer_per_s"])
            for name, by_wire in trtops_rows.items()
            if "batching on" in name
            for wire, by_c in by_wire.items()
        ),
        key=lambda t: t[2],
    )
    for name, by_wire in trtops_rows.items():
        if "batching on" in name:
            for wire, by_c in by_wire.items():
                ratio = by_c[c]["throughput_infer_per_s"] / raw_best["best_infer_per_s"]
                print(f"saturated throughput vs raw best ({name}, {wire}): {ratio:.0%}")
    best = raw_best["best_infer_per_s"]
    ratio = ours / best
    print(
        f"target saturated throughput >= 90% of raw best batched ({best:.1f} infer/s:"
        f" {raw_best['label']}, batch {raw_best['best_batch']}): best is {best_name},"
        f" {best_wire}: {ours:.1f} = {ratio:.0%} -> {'MET' if ratio >= 0.9 else 'MISSED'}"
    )
    for name, by_wire in rows.items():
        if name.startswith("trtops"):
            continue
        for wire, by_c in by_wire.items():
            peer = by_c[c]["throughput_infer_per_s"]
            mine = max(
                w[wire][c]["throughput_infer_per_s"]
                for n, w in trtops_rows.items()
                if "batching on" in n
            )
            print(
                f"target above the peer at c={c} ({wire}): {mine:.1f} vs {name} {peer:.1f}"
                f" -> {'MET' if mine > peer else 'MISSED'}"
            )
    with open("/proc/loadavg") as f:
        print("load average at the end:", " ".join(f.read().split()[:3]))
    if args.json:
        args.json.write_text(
            json.dumps({"model": MODEL, "raw": raws, "servers": rows}, indent=2, default=str)
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
