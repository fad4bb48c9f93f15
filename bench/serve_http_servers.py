"""The HTTP front ends side by side: uvicorn vs. granian (ASGI and RSGI), one run, same handler.

``trtops-worker serve --http-server S`` for each S serves the same model with one front end, one
one-thread instance, pinned (``taskset``) to one core, while ``trtops-worker bench`` drives it from
another core, round after round in alternating order so that every side sees the same machine
state. Prints, per side, wire and concurrency, the medians over the rounds of p50, throughput and
the server's CPU per request outside inference (``srv us``: all its CPU minus the inference CPU it
counts itself, ``trtops_compute_cpu_seconds_total``), with ratios to uvicorn, and the median of
the per-round ``srv us`` ratios; and raw ONNX Runtime's batch-1 p50 on the server's core, the
c=1 reference.

Usage::

    python bench/serve_http_servers.py [--rounds 5] [--seconds 3] [--server-cpu 0] \
        [--load-cpu 1] [--concurrency 1 16] [--json out.json]

A script, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "worker"), str(ROOT / "bench")]

from serve_before_after import bench, print_table, serve  # noqa: E402
from serve_benchmark import RawShape  # noqa: E402
from trtops_worker import samples  # noqa: E402

SERVERS = ("uvicorn", "granian-asgi", "granian-rsgi")
WIRES = ("http-binary", "http-json")
SERVE_FLAGS = ["--front-ends", "1", "--instances", "1", "--intra-op-threads", "1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    pin_server, pin_load = ["taskset", "-c", args.server_cpu], ["taskset", "-c", args.load_cpu]
    results: dict[str, dict[str, list[dict[str, object]]]] = {s: {} for s in args.servers}
    raw_p50: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = samples.save(samples.conv_classifier(), tmp / "conv.onnx")
        os.sched_setaffinity(0, {int(c) for c in args.server_cpu.split(",")})
        raw = RawShape(model, 1, 1, [1], side=32)
        for round_ in range(args.rounds):
            raw_p50.append(raw.latency(1.0)[0])
            order = args.servers if round_ % 2 == 0 else args.servers[::-1]
            for side in order:
                flags = [*SERVE_FLAGS, "--http-server", side]
                log = tmp / f"{side}-{round_}.log"
                process, http, _, metrics = serve(ROOT, model, log, flags, pin_server)
                try:
                    for wire in WIRES:
                        for c in args.concurrency:
                            summary = bench(
                                http, wire, c, args.seconds, (process.pid, metrics), pin_load
                            )
                            results[side].setdefault(f"{wire} c={c}", []).append(summary)
                finally:
                    process.terminate()
                    process.wait(30)
    print(
        f"median of {args.rounds} rounds (order alternating), server on cpu {args.server_cpu},"
        f" load on cpu {args.load_cpu}; raw ONNX Runtime batch-1 p50"
        f" {statistics.median(raw_p50):.3f} ms; ratios: side / uvicorn"
    )

    base = args.servers[0]
    print_table(results, base, ("p50", "rps", "srv"), first="server")
    # each round runs every side back to back: its ratios see one machine state
    print(f"serving CPU per request, the median of the per-round ratios to {base}:")
    for case in results[base]:
        for side in args.servers[1:]:
            pairs = zip(results[base][case], results[side][case], strict=True)
            ratios = [
                float(b["server_us_per_request"]) / float(a["server_us_per_request"])  # type: ignore[arg-type]
                for a, b in pairs
            ]
            print(f"- {side}, {case}: {statistics.median(ratios):.2f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"raw_p50_ms": raw_p50, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
