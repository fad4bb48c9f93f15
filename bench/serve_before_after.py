"""The same serve benchmark on two revisions of the server, in one run, side by side.

Answers "does this change cost anything on the happy path?": ``trtops-worker serve`` from a
given git revision (checked out into a temporary worktree) and from this tree serve the same
model with the same flags, and ``trtops-worker bench`` (this tree's) drives each in turn, round
after round, so both see the same machine state. Prints p50/p99 and throughput per wire and
concurrency, and the after/before ratios; and the server's CPU per request outside inference
(``srv us``): all its processes' CPU minus the inference CPU (its threads named
``trtops-ort-run``, or its ``trtops_compute_cpu_seconds_total``, whichever the revision has;
exact with one-thread instances), per request. ``--after-variants`` adds more "after" sides:
this tree with more flags each (one step switched off, say), in the same rounds.

Usage::

    python bench/serve_before_after.py --before 68e4de1 [--seconds 3] [--rounds 2] \
        [--serve-flags '--front-ends 1 --instances 1 --intra-op-threads 1'] \
        [--after-variants=--batches-in-worker-thread] [--json out.json] \
        [--model tiny] [--pin] [--wires http-binary grpc-raw] [--max-batch-size 32]

``--pin``: the server on core 0 (``taskset -c 0``), the load on core 1, so the load generator
does not share the server's core. ``--model tiny`` (width 4, depth 1): inference is a small
part of the CPU, so the serving CPU per request (``srv us``) is most of what is measured.

A script, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "worker"), str(ROOT / "bench")]

from serve_benchmark import tree_cpu  # noqa: E402
from trtops_worker import samples  # noqa: E402

from tests.support.prometheus import free_port  # noqa: E402  # the repo root is on the path now

MODELS = {"conv": {}, "tiny": {"width": 4, "depth": 1}}
WIRES = {
    "http-json": ["--protocol", "http"],
    "http-binary": ["--protocol", "http", "--binary-data"],
    "grpc-raw": ["--protocol", "grpc"],
}


def _path(tree: Path) -> str:
    """``tree``'s packages ahead of whatever PYTHONPATH already holds (installed deps)."""
    return ":".join(
        p
        for p in (f"{tree / 'worker'}:{tree / 'operator'}:{tree}", os.environ.get("PYTHONPATH"))
        if p
    )


def inference_cpu(metrics_port: int) -> float:
    """The server's own count of its inference CPU seconds (0 where the revision has none)."""
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("trtops_compute_cpu_seconds_total")
    )


def cpu_now(pid: int, metrics_port: int) -> tuple[float, float, float]:
    """``(monotonic time, all CPU seconds, inference CPU seconds)`` of the server ``pid``."""
    _, run_threads, total = tree_cpu(pid)
    return time.monotonic(), total, max(run_threads, inference_cpu(metrics_port))


def serve(
    tree: Path,
    model: Path,
    log: Path,
    extra: list[str],
    prefix: Sequence[str] = (),
    max_batch_size: int = 8,
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """``serve`` from ``tree``, run under ``prefix`` (``taskset -c 0``, say)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": _path(tree)}
    cmd = [*prefix, sys.executable, "-m", "trtops_worker", "serve", "--model", str(model)]
    cmd += ["--model-name", "m", "--host", "127.0.0.1", "--http-port", str(http)]
    cmd += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    cmd += ["--max-batch-size", str(max_batch_size), "--max-queue-delay-us", "2000", *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).ok:
                return process, http, grpc, metrics
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{tree} did not get ready:\n{log.read_text()}")


def bench(
    port: int,
    wire: str,
    concurrency: int,
    seconds: float,
    server: tuple[int, int],
    prefix: Sequence[str] = (),
) -> dict[str, object]:
    """One load (run under ``prefix``); adds ``server_us_per_request``: the server's (``(pid,
    metrics port)``) CPU outside inference per request over the measured window (after the
    0.5 s warm-up)."""
    url = f"127.0.0.1:{port}" if wire.startswith("grpc") else f"http://127.0.0.1:{port}"
    cmd = [*prefix, sys.executable, "-m", "trtops_worker", "bench", "--url", url, "--model", "m"]
    cmd += [*WIRES[wire], "--concurrency", str(concurrency)]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd += ["--duration-seconds", str(seconds), "--warmup-seconds", "0.5", "--json", out.name]
        env = {**os.environ, "PYTHONPATH": _path(ROOT)}
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        time.sleep(0.5)
        first = cpu_now(*server)
        _, err = load.communicate(timeout=seconds + 120)
        last = cpu_now(*server)
        if load.returncode:
            raise RuntimeError(f"bench failed: {err.decode()[-2000:]}")
        summary: dict[str, object] = json.loads(Path(out.name).read_text())
    elapsed = last[0] - first[0]
    serving_cores = ((last[1] - first[1]) - (last[2] - first[2])) / elapsed
    summary["server_us_per_request"] = serving_cores / float(summary["throughput_rps"]) * 1e6  # type: ignore[arg-type]
    return summary


LABELS = {"p50": "p50 ms", "p99": "p99 ms", "rps": "req/s", "srv": "srv us"}


def print_table(
    results: dict[str, dict[str, list[dict[str, object]]]],
    base: str,
    keys: Sequence[str],
    first: str = "side",
) -> None:
    """A Markdown table of the medians over the rounds of ``keys`` (of :data:`LABELS`) for each
    side and case of ``results``, with the ratio of each to side ``base``'s."""

    def med(side: str, key: str, case: str) -> float:
        runs = results[side][case]
        if key == "rps":
            return statistics.median(float(r["throughput_rps"]) for r in runs)  # type: ignore[arg-type]
        if key == "srv":
            return statistics.median(float(r["server_us_per_request"]) for r in runs)  # type: ignore[arg-type]
        return statistics.median(float(r["latency_ms"][key]) for r in runs)  # type: ignore[index]

    print(f"| {first} | case | " + " | ".join(f"{LABELS[k]} | ratio" for k in keys) + " |")
    print("| --- | --- |" + " ---: | ---: |" * len(keys))
    for case in results[base]:
        for side in results:
            cells = []
            for key in keys:
                value, ref = med(side, key, case), med(base, key, case)
                cells.append(f"{value:.2f} | {value / ref:.2f}" if ref else f"{value:.2f} | -")
            print(f"| {side} | {case} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    before_from = parser.add_mutually_exclusive_group(required=True)
    before_from.add_argument("--before", help="git revision of the 'before' server")
    before_from.add_argument(
        "--before-tree", type=Path, help="a checkout of it (`git archive REV worker | tar -x`)"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--serve-flags",
        default="",
        help="more serve flags for both sides, e.g. '--front-ends 1 --instances 1' so that"
        " sizing defaults changed in between do not count",
    )
    parser.add_argument(
        "--after-variants",
        nargs="*",
        default=[],
        help="more 'after' sides: this tree with these flags added (each one string)",
    )
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--model", choices=sorted(MODELS), default="conv")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--wires", nargs="+", choices=sorted(WIRES), default=list(WIRES))
    parser.add_argument(
        "--pin", action="store_true", help="the server on core 0, the load on core 1 (taskset)"
    )
    args = parser.parse_args()
    pinned = args.pin
    server_cpus = ["taskset", "-c", "0"] if pinned else []
    load_cpus = ["taskset", "-c", "1"] if pinned else []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = samples.save(samples.conv_classifier(**MODELS[args.model]), tmp / "m.onnx")
        before = args.before_tree or tmp / "before"
        if args.before_tree is None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
                check=True,
                capture_output=True,
            )
        sides = [("before", before, ""), ("after", ROOT, "")]
        sides += [(f"after {v}", ROOT, v) for v in args.after_variants]
        results: dict[str, dict[str, list[dict[str, object]]]] = {s[0]: {} for s in sides}
        try:
            for round_ in range(args.rounds):
                for side, tree, more in sides if round_ % 2 == 0 else sides[::-1]:
                    log = tmp / f"{len(results)}-{round_}.log"
                    flags = [*args.serve_flags.split(), *more.split()]
                    process, http, grpc, metrics = serve(
                        tree, model, log, flags, server_cpus, args.max_batch_size
                    )
                    try:
                        for wire in args.wires:
                            port = grpc if wire.startswith("grpc") else http
                            for c in args.concurrency:
                                server = (process.pid, metrics)
                                summary = bench(port, wire, c, args.seconds, server, load_cpus)
                                results[side].setdefault(f"{wire} c={c}", []).append(summary)
                    finally:
                        process.terminate()
                        process.wait(30)
        finally:
            if args.before_tree is None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                    check=False,
                )
    print(
        f"before = {args.before or args.before_tree}, after = this tree;"
        f" median of {args.rounds} rounds (order alternating); ratios: side / before"
    )
    print_table(results, "before", ("p50", "p99", "rps", "srv"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
