"""``trtops-worker bench``: drive OIP v2 load at a server and report latency (perf_analyzer style).

Prints a table; ``--json PATH`` also writes the summary (``-`` for stdout). Exits 1 when no
request succeeded, so scripts notice a dead target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="server URL (gRPC: host:port)"
    )
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument(
        "--binary-data",
        action="store_true",
        help="HTTP: tensors as raw bytes (binary tensor data extension) instead of JSON numbers",
    )
    parser.add_argument(
        "--one-connection",
        action="store_true",
        help="gRPC: every worker on one channel (one TCP connection), as an application with"
        " one channel; default: a connection per worker",
    )
    parser.add_argument("--model", required=True)
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency", type=int, default=None, help="closed loop: requests in flight"
    )
    load.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    parser.add_argument(
        "--max-connections", type=int, default=64, help="rate mode: connection pool"
    )
    parser.add_argument("--duration-seconds", type=float, required=True)
    parser.add_argument("--warmup-seconds", type=float, default=0.0, help="sent but not measured")
    parser.add_argument("--max-requests", type=int, default=10_000_000, help="stop after this many")
    parser.add_argument("--input-file", type=Path, help=".npz with one array per input name")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--json", dest="json_path", help="write the summary as JSON here ('-': stdout)"
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import uvloop

    from .loadgen import run_load
    from .stats import render_table

    if args.duration_seconds <= 0 or args.batch_size < 1:
        print("--duration-seconds must be > 0 and --batch-size >= 1", file=sys.stderr)
        return 2
    # --concurrency 0 or less ran one worker (gRPC) or none (HTTP: 0 requests in a table)
    if (args.concurrency is not None and args.concurrency < 1) or args.max_connections < 1:
        print("bench: --concurrency and --max-connections must be >= 1", file=sys.stderr)
        return 2
    if args.rate is not None and args.rate <= 0:
        print("bench: --rate must be > 0 requests per second", file=sys.stderr)
        return 2
    if args.one_connection and args.protocol != "grpc":  # before any connection is tried
        print(
            "bench: --one-connection is for gRPC (HTTP/1.1 sends one request at a time)",
            file=sys.stderr,
        )
        return 2
    npz = None
    if args.input_file is not None:
        with np.load(args.input_file) as data:
            npz = {k: data[k] for k in data.files}
    concurrency = args.max_connections if args.rate else (args.concurrency or 1)
    from .clients import RequestFailed

    try:
        result = uvloop.run(
            run_load(
                url=args.url,
                model=args.model,
                protocol=args.protocol,
                binary_data=args.binary_data,
                concurrency=concurrency,
                rate=args.rate,
                duration_s=args.duration_seconds,
                warmup_s=args.warmup_seconds,
                batch_size=args.batch_size,
                max_requests=args.max_requests,
                npz=npz,
                one_connection=args.one_connection,
            )
        )
    except (RequestFailed, OSError, ValueError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    summary = result.summary()
    print(render_table(summary))
    if args.json_path == "-":
        print(json.dumps(summary, indent=2))
    elif args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if result.successes else 1
