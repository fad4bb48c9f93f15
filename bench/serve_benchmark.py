"""Serving benchmark: raw ONNX Runtime vs. ``trtops-worker serve`` (batching off/on) vs. MLServer.

One run, one model, side by side:

  (a) the raw ORT session in a tight loop, under every session configuration the server can use
      (ORT's defaults, which the server uses; no spinning; two runs at once with one thread
      each): batch 1 latency and throughput at each batch size. The baseline is the best of all.
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

    python bench/serve_benchmark.py [--seconds 4] [--image-size 32] [--max-batch-size 32] \
        [--concurrency N] [--mlserver /tmp/peer-venv/bin/mlserver] [--json out.json]

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

MODEL = {"width": 48, "depth": 4}
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
    RawConfig("ORT defaults, the server's (threads per core, spinning)", 0, True, 1),
    RawConfig("no spinning (threads per core)", 0, False, 1),
    RawConfig("2 runs at once, 1 thread each (--instances 2)", 1, False, 2),
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


class RawBackend:
    """The ORT session alone under one configuration, measured in this process."""

    def __init__(self, model: Path, config: RawConfig, image_size: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if config.spinning else "0"
        )
        self.config = config
        self.session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(0)
        size = image_size
        self.inputs = {b: rng.normal(0, 1, (b, 3, size, size)).astype(np.float32) for b in BATCHES}
        for x in self.inputs.values():
            self.session.run(None, {"input": x})
        self.best_batch = 1

    def latency(self, seconds: float) -> tuple[float, float]:
        """Batch-1 ``(p50, p99)`` in ms, one call at a time."""
        latencies = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            self.session.run(None, {"input": self.inputs[1]})
            latencies.append(time.perf_counter() - t0)
        return percentile_ms(latencies, 50), percentile_ms(latencies, 99)

    def sweep(self, seconds: float) -> dict[int, float]:
        """Throughput at every batch size; remembers the best batch for :meth:`best`."""
        batched = {
            b: throughput(self.session, x, self.config.parallel, seconds / len(BATCHES))
            for b, x in self.inputs.items()
        }
        self.best_batch = max(batched, key=lambda b: batched[b])
        return batched

    def best(self, seconds: float) -> float:
        return throughput(self.session, self.inputs[self.best_batch], self.config.parallel, seconds)


def raw_now(raws: list[RawBackend], seconds: float) -> dict[str, Any]:
    """The raw reference right now: best batch-1 p50 and best batched throughput of any config."""
    p50 = min(r.latency(seconds / 2)[0] for r in raws if r.config.parallel == 1)
    rates = {r.config.label: r.best(seconds) for r in raws}
    label = max(rates, key=lambda k: rates[k])
    return {"p50_ms": p50, "best_infer_per_s": rates[label], "best_label": label}


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


def mlserver(binary: str, model: Path, work: Path, image_size: int) -> Target:
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
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [-1, 3, image_size, image_size]}
                ],
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


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="the model's input side: compute per row grows with its square (32: ~2 core-ms)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="the servers' max batch size; tune it like the raw sweep says (a model whose"
        " activations spill out of cache at large batches runs fewer rows per second there)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="the saturating concurrency (default: 3 x the max batch size, so with two"
        " instances busy a full third batch is always waiting and no instance idles)",
    )
    parser.add_argument(
        "--mlserver",
        default=shutil.which("mlserver") or "/tmp/peer-venv/bin/mlserver",  # noqa: S108  # documented venv
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    spec = {**MODEL, "image_size": args.image_size}
    model = samples.save(samples.conv_classifier(**spec), work / "conv.onnx")
    side = args.image_size
    print(
        f"model: samples.conv_classifier({spec}) input [N,3,{side},{side}] FP32; "
        f"cores: {os.cpu_count()}; load average at start: {loadavg()}"
    )
    raws = [RawBackend(model, config, args.image_size) for config in RAW_CONFIGS]
    sweeps = {r.config.label: r.sweep(args.seconds * 1.5) for r in raws}
    latencies = {
        r.config.label: r.latency(args.seconds / 2) for r in raws if r.config.parallel == 1
    }
    batching = ["--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", "2000"]
    targets = [
        trtops(model, "trtops, batching off", []),
        trtops(model, "trtops, batching on", batching),
        trtops(model, "trtops, batching on, 2 instances", [*batching, "--instances", "2"]),
    ]
    if Path(args.mlserver).exists():
        targets.append(mlserver(args.mlserver, model, work, args.image_size))
    else:
        print(f"MLServer not found at {args.mlserver}: peer skipped")
    c = args.concurrency or 3 * args.max_batch_size
    print(
        f"batching on: max batch {args.max_batch_size}, max queue delay 2000 us;"
        f" saturation at c={c}"
    )
    # The machine is shared: every server measurement is bracketed by a raw one just before and
    # just after, and compared with their mean, never with a raw figure from another minute.
    rows: list[dict[str, Any]] = []
    for target in targets:
        log = work / f"{target.name.replace(' ', '_').replace(',', '')}.log"
        with (
            running(target.cmd, target.url, log, cwd=work) as process,
            CpuSampler(process.pid) as sampler,
        ):
            for wire in target.wires:
                before = raw_now(raws, args.seconds / 4)
                by_c = {n: load(target, wire, n, args.seconds, sampler) for n in (1, c)}
                after = raw_now(raws, args.seconds / 4)
                raw = {k: (before[k] + after[k]) / 2 for k in ("p50_ms", "best_infer_per_s")}
                rows.append(
                    {
                        "target": target.name,
                        "wire": wire,
                        "by_concurrency": by_c,
                        "raw": raw,
                        "raw_before": before,
                        "raw_after": after,
                        "loadavg": loadavg(),
                    }
                )

    print()
    print("Raw ORT alone, at the start (batch-1 latency; throughput by batch size, infer/s):")
    for r in raws:
        label = r.config.label
        lat = (
            f"p50 {latencies[label][0]:.2f} ms, p99 {latencies[label][1]:.2f} ms; "
            if (label in latencies)
            else ""
        )
        print(f"  {label}: {lat}{ {b: round(v) for b, v in sweeps[label].items()} }")
    print()
    print(
        f"{'configuration':<33} {'wire':<6} {'conc':>4} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'infer/s':>8} {'err':>4} {'raw':>7} {'ratio':>6} {'srv cores':>9} {'loop us/req':>11} "
        f"{'client cores':>12}"
    )
    for row in rows:
        for n, m in row["by_concurrency"].items():
            lat = m["latency_ms"]
            raw = row["raw"]
            if n == 1:
                ref, ratio = f"{raw['p50_ms']:.2f}", f"{lat['p50'] - raw['p50_ms']:+.2f}"
            else:
                ref = f"{raw['best_infer_per_s']:.0f}"
                ratio = f"{m['throughput_infer_per_s'] / raw['best_infer_per_s']:.0%}"
            loop_us = m["loop_us_per_request"]
            print(
                f"{row['target']:<33} {row['wire']:<6} {n:>4} "
                f"{lat['p50']:>7.2f} {lat['p99']:>7.2f} {m['throughput_infer_per_s']:>8.1f} "
                f"{sum(m['errors'].values()):>4} {ref:>7} "
                f"{ratio:>6} {m['server_cores']:>9.2f} "
                f"{loop_us if loop_us is not None else '-':>11} {m['client_cpu_cores']:>12.2f}"
            )
    print(
        "raw: at c=1 the raw batch-1 p50 (ms) and the server's p50 minus it; at c="
        f"{c} the raw best batched infer/s and the server's share of it; both the mean of a raw"
        " measurement just before and just after that server's runs."
    )

    print()
    ours = [r for r in rows if r["target"].startswith("trtops")]
    for row in ours:
        delta = row["by_concurrency"][1]["latency_ms"]["p50"] - row["raw"]["p50_ms"]
        print(
            f"target c=1 p50 within 1 ms of raw ({row['target']}, {row['wire']}): {delta:+.2f} ms"
            f" -> {'MET' if delta <= 1 else 'MISSED'}"
        )

    def share(r: dict[str, Any]) -> float:
        rate: float = r["by_concurrency"][c]["throughput_infer_per_s"]
        return rate / float(r["raw"]["best_infer_per_s"])

    batched = [row for row in ours if "batching on" in row["target"]]
    best = max(batched, key=share)
    print(
        f"target saturated throughput >= 90% of raw best batched: best is {best['target']},"
        f" {best['wire']}: {share(best):.0%} -> {'MET' if share(best) >= 0.9 else 'MISSED'}"
    )
    for peer in (row for row in rows if not row["target"].startswith("trtops")):
        mine = max((row for row in batched if row["wire"] == peer["wire"]), key=share)
        if sum(peer["by_concurrency"][c]["errors"].values()):
            print(f"target above the peer at c={c} ({peer['wire']}): the peer failed requests")
            continue
        print(
            f"target above the peer at c={c} ({peer['wire']}): {mine['target']} {share(mine):.0%}"
            f" of raw vs {peer['target']} {share(peer):.0%}"
            f" -> {'MET' if share(mine) > share(peer) else 'MISSED'}"
        )
    print("load average at the end:", loadavg())
    if args.json:
        args.json.write_text(
            json.dumps(
                {"model": spec, "raw_sweeps": sweeps, "raw_latency": latencies, "rows": rows},
                indent=2,
                default=str,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
