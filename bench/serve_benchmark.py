"""Serving benchmark: raw ONNX Runtime vs. ``trtops-worker serve`` vs. Triton and MLServer, on
any number of cores.

One run, one model, side by side:

  (a) raw ONNX Runtime in this process, every session shape that fills the cores given
      (``S`` sessions of ``T`` threads, ``S x T = cores``, each session called back to back from
      its own thread): batch-1 latency and throughput at batch 1, 8 and the max batch. The raw
      reference is the best shape at its best batch; its batch-1 p50 is the c=1 reference.
  (b) ``trtops-worker serve`` with default sizing flags (front ends, instances and threads
      from the usable cores) and dynamic batching on, as the operator runs it; then variants
      that show what each scaling step pays (one front end; one instance of all threads, the
      old default);
  (c) Triton Inference Server (the ``tritonserver`` binary inside PyPI's ``nvidia-pytriton``
      wheel) with its python backend running the same ONNX Runtime session, one-thread model
      instances filling the cores, and Triton's own dynamic batcher (same max batch and delay);
  (d) MLServer (its documented custom-runtime API wrapping the same session), if installed;

each at concurrency 1 and at a saturating concurrency (several load processes on big nodes),
driven by ``trtops-worker bench`` over each wire format: HTTP/JSON, HTTP with the binary tensor
data extension and gRPC with ``raw_input_contents``. Peers are measured on the wires they
accept; a peer that cannot run is reported with the reason. Besides latency and throughput it
prints where the CPU went: the server's cores (all its processes), the CPU per request spent
outside inference (all of the server's CPU minus the inference CPU it counts itself,
``trtops_compute_cpu_seconds_total``), the event loops' CPU per request, and the load
generators' cores. Then the target checks. A script, not a test: numbers depend on the machine.

Usage::

    python bench/serve_benchmark.py [--seconds 3] [--image-size 32] [--max-batch-size 32] \
        [--cpus 0-1] [--variants defaults,front-ends=1,one-instance] [--peers triton,mlserver] \
        [--json out.json]

``--cpus`` pins the raw sessions and the servers to those cores (default: all usable); the
load generators run on the other cores when there are any. The peers go into a venv of their
own (MLServer pins protobuf < 7, our gRPC stubs need 7): ``python -m venv /tmp/peer-venv &&
/tmp/peer-venv/bin/pip install '.[serve-peers]'``, then ``--mlserver
/tmp/peer-venv/bin/mlserver`` (the default) and ``--tritonserver
/tmp/peer-venv/lib/python3.X/site-packages/pytriton/tritonserver/bin/tritonserver`` (default:
nvidia-pytriton's in this environment, if installed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
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
from trtops_worker.serve.backend_onnxruntime import RUN_THREAD_NAME
from trtops_worker.serve.cpus import plan_sizing

MODEL = {"width": 48, "depth": 4}
DELAY_US = 2000  # max queue delay, ours and Triton's
FLAG_VARIANTS = {  # --variants NAME: the defaults with these flags
    "worker-thread": ["--batches-in-worker-thread"],  # before batches ran on the loop
    "uvicorn": ["--http-server", "uvicorn"],  # the HTTP listener before serve/http11.py
    "narrow": ["--wide-threads", "0"],  # no wide session (the default before this round)
    "wide": ["--wide-threads", "-1"],  # the wide session on every core (now the default)
}

MLSERVER_RUNTIME = textwrap.dedent(
    """
    import os

    import onnxruntime as ort
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse


    class OrtModel(MLModel):
        async def load(self) -> bool:
            # One session of all the cores it may use (one process: parallel_workers 0). The
            # thread count is given: ONNX Runtime's automatic one pins its pool threads to every
            # core of the node, past the affinity the benchmark sets (--cpus).
            options = ort.SessionOptions()
            options.intra_op_num_threads = len(os.sched_getaffinity(0))
            self._session = ort.InferenceSession(
                self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
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

# Triton's python backend: the same ORT session, one per model instance, and Triton's dynamic
# batcher hands ``execute`` several requests at once (merged here like our batcher does).
TRITON_MODEL = textwrap.dedent(
    """
    import sys

    sys.path[:0] = {paths!r}

    import json

    import numpy as np
    import onnxruntime as ort
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            params = json.loads(args["model_config"])["parameters"]
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(params["threads"]["string_value"])
            self.session = ort.InferenceSession(
                params["onnx"]["string_value"], options, providers=["CPUExecutionProvider"]
            )

        def execute(self, requests):
            xs = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
            x = xs[0] if len(xs) == 1 else np.concatenate(xs)
            (y,) = self.session.run(["logits"], {{"input": x}})
            responses, start = [], 0
            for part in xs:
                out = np.ascontiguousarray(y[start : start + len(part)])
                start += len(part)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", out)]))
            return responses
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_cpus(text: str) -> list[int]:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]``."""
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))] * 1000


# -- raw ONNX Runtime ----------------------------------------------------------------------------


class RawShape:
    """``sessions`` ORT sessions of ``threads`` threads each, measured in this process."""

    def __init__(self, model: Path, sessions: int, threads: int, batches: list[int], side: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = [
            ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            for _ in range(sessions)
        ]
        self.label = f"{sessions} x {threads} thread{'s' if threads > 1 else ''}"
        rng = np.random.default_rng(0)
        self.inputs = {b: rng.normal(0, 1, (b, 3, side, side)).astype(np.float32) for b in batches}
        for session in self.sessions:
            for x in self.inputs.values():
                session.run(None, {"input": x})
        self.best_batch = batches[-1]

    def latency(self, seconds: float) -> tuple[float, float]:
        """Batch-1 ``(p50, p99)`` in ms, one call at a time on one session."""
        latencies = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            self.sessions[0].run(None, {"input": self.inputs[1]})
            latencies.append(time.perf_counter() - t0)
        return percentile_ms(latencies, 50), percentile_ms(latencies, 99)

    def throughput(self, batch: int, seconds: float) -> float:
        """Rows per second, every session called back to back from its own thread."""
        x = self.inputs[batch]
        counts = [0] * len(self.sessions)
        stop = time.perf_counter() + seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop:
                self.sessions[i].run(None, {"input": x})
                counts[i] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(self.sessions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) * len(x) / (time.perf_counter() - t0)

    def sweep(self, seconds: float) -> dict[int, float]:
        rates = {b: self.throughput(b, seconds) for b in self.inputs}
        self.best_batch = max(rates, key=lambda b: rates[b])
        return rates


def raw_shapes(cores: int) -> list[tuple[int, int]]:
    """``(sessions, threads)`` that fill ``cores``: every divisor of it."""
    return [(s, cores // s) for s in range(1, cores + 1) if cores % s == 0]


def raw_now(best: RawShape, seconds: float) -> dict[str, float]:
    """The raw reference right now: the best shape's batch-1 p50 and best batched rate."""
    return {
        "p50_ms": best.latency(seconds / 3)[0],
        "best_infer_per_s": best.throughput(best.best_batch, seconds * 2 / 3),
    }


# -- the servers' CPU -----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                ]
    return pids


def _stat_seconds(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> tuple[float, float, float]:
    """``(main threads, ORT run threads, all threads)`` CPU seconds of ``pid`` and its
    descendants. A trtops front end's main thread runs its event loop; its threads named
    ``RUN_THREAD_NAME`` call ONNX Runtime (all of the inference, with one-thread instances)."""
    main = run = total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError):
            main += _stat_seconds(f"/proc/{p}/task/{p}/stat")
            total += _stat_seconds(f"/proc/{p}/stat")
            for task in os.listdir(f"/proc/{p}/task"):
                if Path(f"/proc/{p}/task/{task}/comm").read_text().strip() == RUN_THREAD_NAME:
                    run += _stat_seconds(f"/proc/{p}/task/{task}/stat")
    return main, run, total


class CpuSampler:
    """Samples a server's CPU while a load runs, to rate it over the load's measured window."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.monotonic(), *tree_cpu(self._pid)))

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, start: float, end: float) -> tuple[float, float, float]:
        """``(main-thread, run-thread, all)`` cores between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0, 0.0, 0.0
        first, last = inside[0], inside[-1]
        elapsed = last[0] - first[0]
        main, run, total = ((b - a) / elapsed for a, b in zip(first[1:], last[1:], strict=True))
        return main, run, total


# -- servers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    cmd: list[str]
    url: str  # HTTP
    grpc: str  # host:port
    wires: tuple[str, ...]  # the wire formats it accepts, from WIRES
    # trtops with one-thread instances: the inference CPU it counts itself
    # (trtops_compute_cpu_seconds_total on this metrics URL) is all of it
    inference_cpu_url: str | None = None
    env: dict[str, str] | None = None
    ready_timeout: float = 180


# wire format -> trtops-worker bench flags
ONE_CONNECTION = "gRPC 1 conn"
WIRES = {
    "JSON": ["--protocol", "http"],
    "binary": ["--protocol", "http", "--binary-data"],
    "gRPC": ["--protocol", "grpc"],
    # Saturation only: every request on one gRPC channel (one TCP connection), as an
    # application with one channel sends them; one connection reaches one front end.
    ONE_CONNECTION: ["--protocol", "grpc", "--one-connection"],
}


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        ready_url = f"{url}/v2/models/conv/ready"
        with contextlib.suppress(OSError), urllib.request.urlopen(ready_url, timeout=2) as r:  # noqa: S310
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f} s")


@contextlib.contextmanager
def running(target: Target, log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            target.cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            env={**os.environ, **(target.env or {})},
        )
    try:
        wait_ready(target.url, process, target.ready_timeout)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def trtops(model: Path, name: str, flags: list[str], threads: int) -> Target:
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [
        *(sys.executable, "-m", "trtops_worker", "serve", "--model", str(model)),
        *("--model-name", "conv", "--host", "127.0.0.1", "--http-port", str(port)),
        *("--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)),
        *("--max-queue-size", "1024", "--log-level", "WARNING", *flags),
    ]
    return Target(
        name,
        cmd,
        f"http://127.0.0.1:{port}",
        f"127.0.0.1:{grpc_port}",
        tuple(WIRES),
        inference_cpu_url=f"http://127.0.0.1:{metrics_port}/metrics" if threads == 1 else None,
    )


def server_counts(url: str) -> dict[str, float]:
    """A trtops server's own counts, all front ends together: inference CPU seconds
    (``cpu``), batches run (``batches``) and those run on the wide session (``wide``)."""
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310  # our own server
        text = r.read().decode()
    names = {
        "cpu": "trtops_compute_cpu_seconds_total",
        "batches": "trtops_batch_size_count",
        "wide": "trtops_wide_runs_total",
    }
    return {
        key: sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{")
        )
        for key, name in names.items()
    }


def find_tritonserver(given: str | None) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed (pip install nvidia-pytriton)")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver/bin/tritonserver"


def triton(
    binary: Path, model: Path, work: Path, side: int, max_batch: int, instances: int
) -> Target:
    """Triton's python backend on ``instances`` one-thread ORT sessions, its dynamic batcher."""
    home = binary.parent.parent
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"the wheel has no python backend stub for Python {version}")
    installed = home / "backends/python/triton_python_backend_stub"
    if not installed.exists():  # what pytriton itself does before starting Triton
        shutil.copy2(stub, installed)
    repo = work / "triton"
    (repo / "conv" / "1").mkdir(parents=True, exist_ok=True)
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    (repo / "conv" / "1" / "model.py").write_text(TRITON_MODEL.format(paths=paths))
    (repo / "conv" / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""
            name: "conv"
            backend: "python"
            max_batch_size: {max_batch}
            input [{{ name: "input", data_type: TYPE_FP32, dims: [3, {side}, {side}] }}]
            output [{{ name: "logits", data_type: TYPE_FP32, dims: [10] }}]
            dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} }}
            instance_group [{{ count: {instances}, kind: KIND_CPU }}]
            parameters {{ key: "onnx", value: {{ string_value: "{model}" }} }}
            parameters {{ key: "threads", value: {{ string_value: "1" }} }}
            """
        )
    )
    port, grpc_port = free_port(), free_port()
    env = {}
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if (Path(libdir) / f"libpython{version}.so.1.0").exists():  # the stub embeds this Python
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
        env["PYTHONHOME"] = sys.base_prefix
    cmd = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={home / 'backends'}",
        f"--http-port={port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={free_port()}",
        "--allow-gpu-metrics=false",
        "--log-verbose=0",
    ]
    return Target(
        f"Triton (python backend, {instances} instances)",
        cmd,
        f"http://127.0.0.1:{port}",
        f"127.0.0.1:{grpc_port}",
        # Its HTTP/JSON answers fail for python-backend models in this build (2.51, from
        # nvidia-pytriton 0.7.0): HTTP 500 "output tensor shape does not match size of output
        # for 'logits'" (http_server.cc's WriteDataToJson finds the output buffer's byte size
        # off), whatever the request asks (no `outputs`, `outputs` with binary_data false,
        # binary_data_output false) and with output_pinned_memory off; the same symptom is
        # open upstream (triton-inference-server/server#8019). Binary and gRPC work.
        ("binary", "gRPC", ONE_CONNECTION),
        env=env,
    )


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
        "MLServer",
        [binary, "start", str(root)],
        f"http://127.0.0.1:{port}",
        f"127.0.0.1:{grpc_port}",
        ("JSON", "gRPC"),
    )


# -- load -----------------------------------------------------------------------------------------


def load(
    target: Target,
    wire: str,
    concurrency: int,
    seconds: float,
    sampler: CpuSampler,
    processes: int,
    client_cpus: list[int] | None,
) -> dict[str, Any]:
    """``concurrency`` clients over ``processes`` load processes; their results combined."""
    url = target.grpc if WIRES[wire][1] == "grpc" else target.url
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]

    def pin() -> None:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)

    launched = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "trtops_worker", "bench", "--url", url, *WIRES[wire]),
                *("--model", "conv", "--concurrency", str(n), "--duration-seconds", str(seconds)),
                *("--warmup-seconds", "1", "--json", "-"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pin,  # only sets the CPU affinity
        )
        for n in shares
    ]
    inference: list[tuple[float, dict[str, float]]] = []
    if target.inference_cpu_url:  # at the end of the load processes' warm-up, and at the end
        time.sleep(max(0.0, launched + 1.0 - time.monotonic()))
        inference.append((time.monotonic(), server_counts(target.inference_cpu_url)))
    outs = [p.communicate(timeout=seconds + 120) for p in procs]
    ended = time.monotonic()
    if target.inference_cpu_url:
        inference.append((ended, server_counts(target.inference_cpu_url)))
    summaries = []
    for out, err in outs:
        if "{" not in out:
            raise RuntimeError(f"bench failed: {err[-2000:]}")
        summaries.append(json.loads(out[out.index("{") :]))
    errors: dict[str, int] = {}
    for s in summaries:
        for k, v in s["errors"].items():
            errors[k] = errors.get(k, 0) + v
    rps = sum(s["throughput_rps"] for s in summaries)
    window = max(s["duration_seconds"] for s in summaries)
    loop_cores, _, server_cores = sampler.rate(ended - window, ended)
    result: dict[str, Any] = {
        "throughput_rps": rps,
        "throughput_infer_per_s": sum(s["throughput_infer_per_s"] for s in summaries),
        # one process: its percentiles; several: the median of their p50s, the worst p99
        "latency_ms": {
            "p50": float(np.median([s["latency_ms"]["p50"] for s in summaries])),
            "p99": max(s["latency_ms"]["p99"] for s in summaries),
        },
        "errors": errors,
        "client_cpu_cores": sum(s["client_cpu_cores"] for s in summaries),
        "server_cores": round(server_cores, 2),
        "server_us_per_request": round(server_cores / rps * 1e6) if rps else None,
        "loop_us_per_request": round(loop_cores / rps * 1e6) if rps else None,
        "serving_us_per_request": None,
        "wide_batch_share": None,
    }
    if inference and rps:
        (t1, c1), (t2, c2) = inference
        _, _, cores_then = sampler.rate(t1, t2)
        serving_cores = cores_then - (c2["cpu"] - c1["cpu"]) / (t2 - t1)
        result["serving_us_per_request"] = round(serving_cores / rps * 1e6)
        batches = c2["batches"] - c1["batches"]
        result["wide_batch_share"] = (c2["wide"] - c1["wide"]) / batches if batches else None
    return result


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:  # one linear script
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured per load")
    parser.add_argument("--image-size", type=int, default=32, help="the model's input side")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--cpus", help="cores for raw ORT and the servers, e.g. 0-1 (default: all)")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="saturating concurrency (default: max(3 x max batch, 8 x cores))",
    )
    parser.add_argument(
        "--variants",
        default="defaults,front-ends=1,one-instance",
        help="trtops configurations: defaults (no sizing flags), worker-thread (defaults with"
        " --batches-in-worker-thread), uvicorn (defaults with --http-server uvicorn), narrow"
        " (defaults with --wide-threads 0), wide (defaults with --wide-threads -1),"
        " front-ends=N (--front-ends N, instances filling the"
        " cores), one-instance (--front-ends 1 --instances 1: one session of all threads, the"
        " old default)",
    )
    parser.add_argument("--peers", default="triton,mlserver")
    parser.add_argument("--tritonserver", help="path of the binary (default: nvidia-pytriton's)")
    parser.add_argument(
        "--mlserver",
        default=shutil.which("mlserver") or "/tmp/peer-venv/bin/mlserver",  # noqa: S108  # documented venv
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    everything = sorted(os.sched_getaffinity(0))
    server_cpus = parse_cpus(args.cpus) if args.cpus else everything
    others = [c for c in everything if c not in server_cpus]
    client_cpus = others or None
    os.sched_setaffinity(0, server_cpus)  # raw ORT here; the servers inherit it
    cores = len(server_cpus)
    sizing = plan_sizing(cores)
    load_processes = max(1, cores // 4)

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    spec = {**MODEL, "image_size": args.image_size}
    model = samples.save(samples.conv_classifier(**spec), work / "conv.onnx")
    side, mb = args.image_size, args.max_batch_size
    print(
        f"model: samples.conv_classifier({spec}) input [N,3,{side},{side}] FP32; ONNX Runtime"
        f" {ort.__version__}; server cores {cores} ({args.cpus or 'all'}), load generators on"
        f" {len(others) or 'the same'} cores; load average at start: {loadavg()}"
    )
    batches = sorted({1, 8, mb})
    shapes = [RawShape(model, s, t, batches, side) for s, t in raw_shapes(cores)]
    sweeps = {r.label: r.sweep(args.seconds / 2) for r in shapes}
    latencies = {r.label: r.latency(args.seconds / 3) for r in shapes}
    best = max(shapes, key=lambda r: sweeps[r.label][r.best_batch])
    for r in shapes:  # keep only the reference's sessions alive
        if r is not best:
            r.sessions.clear()

    batching = ["--max-batch-size", str(mb), "--max-queue-delay-us", str(DELAY_US)]
    default_name = (
        f"trtops defaults ({sizing.front_ends} front end{'s' if sizing.front_ends > 1 else ''}"
        f" x {sizing.instances} instances x {sizing.intra_op_threads} thread)"
    )
    targets: list[Target] = []
    for variant in filter(None, args.variants.split(",")):
        if variant == "defaults":
            targets.append(trtops(model, default_name, batching, sizing.intra_op_threads))
        elif variant.startswith("front-ends="):
            n = int(variant.partition("=")[2])
            other = plan_sizing(cores, front_ends=n)
            targets.append(
                trtops(
                    model,
                    f"trtops --front-ends {n} ({other.instances} instances each)",
                    [*batching, "--front-ends", str(n)],
                    other.intra_op_threads,
                )
            )
        elif variant in FLAG_VARIANTS:  # the defaults with one flag changed
            flags = FLAG_VARIANTS[variant]
            targets.append(
                trtops(
                    model,
                    f"{default_name} {' '.join(flags)}",
                    [*batching, *flags],
                    sizing.intra_op_threads,
                )
            )
        elif variant == "one-instance":
            targets.append(
                trtops(
                    model,
                    f"trtops --front-ends 1 --instances 1 ({cores} threads)",
                    [*batching, "--front-ends", "1", "--instances", "1"],
                    cores,
                )
            )
    skipped: dict[str, str] = {}
    peers = set(filter(None, args.peers.split(",")))
    if "triton" in peers:
        try:
            binary = find_tritonserver(args.tritonserver)
            targets.append(triton(binary, model, work, side, mb, cores))
        except (RuntimeError, OSError) as e:
            skipped["Triton"] = str(e)
    if "mlserver" in peers:
        if Path(args.mlserver).exists():
            targets.append(mlserver(args.mlserver, model, work, side))
        else:
            skipped["MLServer"] = f"not installed ({args.mlserver} does not exist)"
    c = args.concurrency or max(3 * mb, 8 * cores)
    print(
        f"batching: max batch {mb}, max queue delay {DELAY_US} us; saturation at c={c} over"
        f" {min(load_processes, c)} load process(es)"
    )
    # Every server measurement is bracketed by a raw one just before and just after, and
    # compared with their mean, never with a raw figure from another minute.
    rows: list[dict[str, Any]] = []
    for target in targets:
        log = work / f"{len(rows)}-{target.name.split()[0]}.log"
        try:
            with running(target, log, work) as process, CpuSampler(process.pid) as sampler:
                for wire in target.wires:
                    before = raw_now(best, args.seconds / 2)
                    # one load process per core over gRPC (its client costs more CPU); at
                    # saturation only over one connection, which one load process holds
                    levels = (
                        [(c, 1)]
                        if wire == ONE_CONNECTION
                        else [(1, 1), (c, cores if wire == "gRPC" else load_processes)]
                    )
                    by_c = {
                        n: load(target, wire, n, args.seconds, sampler, procs, client_cpus)
                        for n, procs in levels
                    }
                    after = raw_now(best, args.seconds / 2)
                    raw = {k: (before[k] + after[k]) / 2 for k in before}
                    rows.append(
                        {"target": target.name, "wire": wire, "by_concurrency": by_c, "raw": raw}
                    )
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            skipped[target.name] = f"{e}; its log ends: {tail}"

    print()
    print("Raw ONNX Runtime alone (batch-1 latency; infer/s by batch size):")
    for r in shapes:
        p50, p99 = latencies[r.label]
        rates = {b: round(v) for b, v in sweeps[r.label].items()}
        mark = "  <- reference" if r is best else ""
        print(f"  {r.label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms; {rates}{mark}")
    print()
    head = (
        "| configuration | wire | conc | p50 ms | p99 ms | infer/s | err | raw | vs raw |"
        " srv cores | srv us/req | serving us/req | loop us/req | client cores | wide |"
    )
    print(head)
    print("|" + " --- |" * 2 + " ---: |" * 13)
    for row in rows:
        for n, m in row["by_concurrency"].items():
            lat, raw = m["latency_ms"], row["raw"]
            if n == 1:
                ref, ratio = f"{raw['p50_ms']:.2f} ms", f"{lat['p50'] - raw['p50_ms']:+.2f} ms"
            else:
                ref = f"{raw['best_infer_per_s']:.0f}"
                ratio = f"{m['throughput_infer_per_s'] / raw['best_infer_per_s']:.1%}"
            wide = m.get("wide_batch_share")
            print(
                f"| {row['target']} | {row['wire']} | {n} | {lat['p50']:.2f} | {lat['p99']:.2f} |"
                f" {m['throughput_infer_per_s']:.1f} | {sum(m['errors'].values())} | {ref} |"
                f" {ratio} | {m['server_cores']:.2f} | {m['server_us_per_request'] or '-'} |"
                f" {m['serving_us_per_request'] or '-'} | {m['loop_us_per_request'] or '-'} |"
                f" {m['client_cpu_cores']:.2f} | {'-' if wide is None else f'{wide:.0%}'} |"
            )
    for name, why in skipped.items():
        print(f"NOT MEASURED: {name}: {why}")
    print(
        f"raw: at c=1 the reference shape's batch-1 p50 and the server's p50 minus it; at c={c}"
        " the reference's infer/s and the server's share of it; each the mean of a raw"
        " measurement just before and just after that server's runs. srv us/req: all the"
        " server's CPU per request; serving us/req: that minus the inference CPU the server"
        " counts (trtops_compute_cpu_seconds_total: the CPU time of the threads calling ONNX"
        " Runtime while it ran; exact with one-thread instances, blank otherwise); loop us/req:"
        " its processes' main threads (with batches on the event loop, inference included);"
        " wide: the share of batches run on the wide session (--wide-threads)."
    )
    print()
    share_target = 0.90 if cores <= 2 else 0.85

    def share(r: dict[str, Any]) -> float:
        return float(
            r["by_concurrency"][c]["throughput_infer_per_s"] / r["raw"]["best_infer_per_s"]
        )

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    defaults = {r["wire"]: r for r in rows if r["target"] == default_name}
    for wire, row in defaults.items():
        if wire == ONE_CONNECTION:  # not one of the wires: shown beside the peers
            continue
        sat, one = row["by_concurrency"][c], row["by_concurrency"][1]
        print(
            f"target saturated >= {share_target:.0%} of raw ({wire}): {share(row):.1%}"
            f" -> {verdict(share(row) >= share_target)}"
        )
        delta = one["latency_ms"]["p50"] - row["raw"]["p50_ms"]
        print(
            f"target c=1 p50 within 0.3 ms of raw ({wire}): {delta:+.2f} ms"
            f" -> {verdict(delta <= 0.3)}"
        )
        limit = {"binary": 60, "JSON": 150}.get(wire)
        serving = sat["serving_us_per_request"]
        if limit and serving is not None:
            print(
                f"target serving CPU per request outside inference <= {limit} us ({wire}):"
                f" {serving} us -> {verdict(serving <= limit)}"
            )
    for peer in (r for r in rows if not r["target"].startswith("trtops")):
        mine = defaults.get(peer["wire"])
        if mine is None:
            continue
        if sum(peer["by_concurrency"][c]["errors"].values()):
            print(f"target above {peer['target']} ({peer['wire']}): the peer failed requests")
            continue
        print(
            f"target above {peer['target']} at c={c} ({peer['wire']}): {share(mine):.1%} vs"
            f" {share(peer):.1%} -> {verdict(share(mine) > share(peer))}"
        )
    print("load average at the end:", loadavg())
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": spec,
                    "cores": cores,
                    "raw_sweeps": sweeps,
                    "raw_latency": latencies,
                    "reference": best.label,
                    "rows": rows,
                    "skipped": skipped,
                },
                indent=2,
                default=str,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
