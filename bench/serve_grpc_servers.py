"""The gRPC servers side by side: h2 (ours, the default) vs. grpcio (grpc.aio), one run.

``trtops-worker serve`` with ``TRTOPS_GRPC_SERVER`` set to each side serves the same model with one
front end, one one-thread instance, pinned (``taskset``) to one core, while ``trtops-worker bench
--protocol grpc`` drives it from another core, round after round in alternating order so that
every side sees the same machine state. Prints, per side and concurrency, the medians over the
rounds of p50, throughput and the server's CPU per request outside inference (``srv us``), with
ratios to grpcio, and the median of the per-round ``srv us`` ratios. The load generator is
grpc.aio too: at high concurrency it can be the limit on throughput, not the server.

Usage::

    python bench/serve_grpc_servers.py [--rounds 5] [--seconds 3] [--server-cpu 0] \
        [--load-cpu 1] [--concurrency 1 32] [--json out.json]

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
from trtops_worker import samples  # noqa: E402

SERVERS = ("grpcio", "h2")
SERVE_FLAGS = ["--front-ends", "1", "--instances", "1", "--intra-op-threads", "1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    pin_server, pin_load = ["taskset", "-c", args.server_cpu], ["taskset", "-c", args.load_cpu]
    results: dict[str, dict[str, list[dict[str, object]]]] = {s: {} for s in SERVERS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = samples.save(samples.conv_classifier(), tmp / "conv.onnx")
        for round_ in range(args.rounds):
            for side in SERVERS if round_ % 2 == 0 else SERVERS[::-1]:
                os.environ["TRTOPS_GRPC_SERVER"] = side  # serve() passes the environment on
                log = tmp / f"{side}-{round_}.log"
                process, _, grpc_port, metrics = serve(ROOT, model, log, SERVE_FLAGS, pin_server)
                try:
                    for c in args.concurrency:
                        summary = bench(
                            grpc_port,
                            "grpc-raw",
                            c,
                            args.seconds,
                            (process.pid, metrics),
                            pin_load,
                        )
                        results[side].setdefault(f"grpc-raw c={c}", []).append(summary)
                finally:
                    process.terminate()
                    process.wait(30)
    print(
        f"median of {args.rounds} rounds (order alternating), server on cpu {args.server_cpu},"
        f" load on cpu {args.load_cpu}; ratios: side / grpcio"
    )
    print_table(results, "grpcio", ("p50", "rps", "srv"), first="server")
    # each round runs both sides back to back: its ratio sees one machine state
    print("serving CPU per request, the median of the per-round ratios h2 / grpcio:")
    for case in results["grpcio"]:
        pairs = zip(results["grpcio"][case], results["h2"][case], strict=True)
        ratios = [
            float(b["server_us_per_request"]) / float(a["server_us_per_request"])  # type: ignore[arg-type]
            for a, b in pairs
        ]
        print(f"- {case}: {statistics.median(ratios):.2f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
