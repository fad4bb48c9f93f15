"""``trtops-worker build``: what the operator's build Job runs.

Whatever happens, the process ends with a compact JSON result in the termination log (and on
stdout with ``--json``) and an exit code per failure category (see ``errors.py``); a traceback
goes to stderr only, never as the only output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from trtops_worker.build.errors import BuildError, ConfigError
from trtops_worker.build.result import compact, failure, write_termination_log
from trtops_worker.cachekey import BACKENDS, CALIBRATION_METHODS, PRECISIONS

__all__ = ["add_arguments", "request_from_args", "run"]


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,8") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("batch sizes must be >= 1")
    return sizes


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="FP32 ONNX model")
    parser.add_argument("--precision", choices=PRECISIONS, required=True)
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--storage", type=Path, required=True, help="content-addressed store root")
    parser.add_argument("--model-sha256", help="pin: fail unless the model has this sha256")
    parser.add_argument(
        "--calibration", type=Path, help=".npz (one array per input) or .npy (one input)"
    )
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="entropy")
    parser.add_argument("--calibration-max-samples", type=int, default=512)
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME:MIN:OPT:MAX",
        help="shape range of a dynamic input, dims like 1x3x32x32 (repeatable)",
    )
    parser.add_argument("--optimization-level", type=int, choices=range(6), default=3)
    parser.add_argument("--workspace-mib", type=int, default=2048)
    parser.add_argument(
        "--validation", type=Path, help="validation inputs (.npz/.npy); default: calibration data"
    )
    parser.add_argument("--validation-max-samples", type=int, default=256)
    parser.add_argument("--min-top1-agreement", type=_fraction, default=0.95)
    parser.add_argument("--max-mean-abs-error", type=float, default=None)
    parser.add_argument("--min-cosine-similarity", type=float, default=0.99)
    parser.add_argument("--benchmark-batch-sizes", type=_batch_sizes, default=(1, 8))
    parser.add_argument("--benchmark-iterations", type=int, default=50)
    parser.add_argument(
        "--benchmark-seconds", type=float, default=2.0, help="time budget per batch size"
    )
    parser.add_argument(
        "--gpu-product", help="GPU product label of the target node (part of the key)"
    )
    # Kubernetes reads /dev/termination-log; a runtime without per-container /dev (the local node
    # agent in tests) names another file through TRTOPS_TERMINATION_LOG.
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(os.environ.get("TRTOPS_TERMINATION_LOG", "/dev/termination-log")),
    )
    parser.add_argument("--json", action="store_true", help="also print the result JSON to stdout")


def request_from_args(args: argparse.Namespace) -> Any:
    from trtops_worker.build.accuracy import Thresholds
    from trtops_worker.build.pipeline import BuildRequest
    from trtops_worker.build.profiles import parse_profile

    if args.calibration_max_samples < 1 or args.validation_max_samples < 1:
        raise ConfigError("InvalidArgument", "sample limits must be >= 1")
    if args.workspace_mib < 1:
        raise ConfigError("InvalidArgument", "--workspace-mib must be >= 1")
    return BuildRequest(
        model=args.model,
        precision=args.precision,
        backend=args.backend,
        storage=args.storage,
        model_sha256=args.model_sha256,
        calibration=args.calibration,
        calibration_method=args.calibration_method,
        calibration_max_samples=args.calibration_max_samples,
        profiles=tuple(parse_profile(p) for p in args.profile),
        optimization_level=args.optimization_level,
        workspace_mib=args.workspace_mib,
        validation=args.validation,
        validation_max_samples=args.validation_max_samples,
        thresholds=Thresholds(
            args.min_top1_agreement, args.max_mean_abs_error, args.min_cosine_similarity
        ),
        benchmark_batch_sizes=args.benchmark_batch_sizes,
        benchmark_iterations=args.benchmark_iterations,
        benchmark_seconds=args.benchmark_seconds,
        gpu_product=args.gpu_product,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code = 0
    try:
        from trtops_worker.build.pipeline import build

        result: dict[str, Any] = build(request_from_args(args))
    except BuildError as exc:
        logging.getLogger("trtops_worker.build").error(
            "%s (%s): %s", exc.reason, exc.category, exc.message
        )
        result, code = failure(exc.category, exc.reason, exc.message), exc.exit_code
    except Exception as exc:  # the operator still gets a reason, the traceback goes to stderr
        logging.getLogger("trtops_worker.build").exception("unexpected failure")
        result, code = failure("internal", "InternalError", f"{type(exc).__name__}: {exc}"), 1
    text = compact(result)
    write_termination_log(args.termination_log, text)
    if args.json:
        print(text)
    return code
