"""``trtops-worker compare``: one model, several precisions, one table (Markdown, JSON, PNG)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from trtops_worker.builder.cli import _batch_sizes
from trtops_worker.builder.errors import BuildError
from trtops_worker.cachekey import BACKENDS, CALIBRATION_METHODS, PRECISIONS

__all__ = ["add_arguments", "run"]


def _precisions(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PRECISIONS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"precisions must be among {', '.join(PRECISIONS)}")
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--precisions", type=_precisions, default=["fp32", "fp16", "int8"])
    parser.add_argument("--calibration", type=Path, help="needed for int8/fp8")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="entropy")
    parser.add_argument("--calibration-max-samples", type=int, default=512)
    parser.add_argument("--validation", type=Path, help="default: the calibration data")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME:MIN:OPT:MAX",
        help="shape range of a dynamic input (TensorRT needs one per dynamic input)",
    )
    parser.add_argument("--out", type=Path, required=True, help="compare.md/.json/.png go here")
    parser.add_argument("--storage", type=Path, help="store for the builds (default: OUT/store)")
    parser.add_argument("--benchmark-batch-sizes", type=_batch_sizes, default=(1,))
    parser.add_argument("--benchmark-iterations", type=int, default=200)
    parser.add_argument("--benchmark-seconds", type=float, default=5.0)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from trtops_worker.builder.compare import compare
    from trtops_worker.builder.pipeline import BuildRequest
    from trtops_worker.builder.profiles import parse_profile

    try:
        base = BuildRequest(
            model=args.model,
            precision="fp32",
            backend=args.backend,
            storage=args.storage or args.out / "store",
            calibration=args.calibration,
            calibration_method=args.calibration_method,
            calibration_max_samples=args.calibration_max_samples,
            validation=args.validation,
            profiles=tuple(parse_profile(p) for p in args.profile),
            benchmark_batch_sizes=args.benchmark_batch_sizes,
            benchmark_iterations=args.benchmark_iterations,
            benchmark_seconds=args.benchmark_seconds,
        )
        rows = compare(base, args.precisions, args.out)
    except BuildError as exc:
        print(f"compare: {exc.reason}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print((args.out / "compare.md").read_text(), end="")
    return 0 if all("error" not in r for r in rows) else 1
