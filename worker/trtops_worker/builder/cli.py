"""``trtops-worker build``: what the operator's build Job runs.

Whatever happens, the process ends with a compact JSON result in the termination log (and on
stdout with ``--json``) and an exit code per failure category (see ``errors.py``); a traceback
goes to stderr only, never as the only output.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtops_worker.builder.accuracy import OUTPUT_KINDS
from trtops_worker.builder.errors import BuildError, ConfigError, StorageError
from trtops_worker.builder.result import compact, failure, write_termination_log
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


def _output_kind(text: str) -> tuple[str, str]:
    name, _, kind = text.partition("=")
    if not name or kind not in OUTPUT_KINDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=KIND, KIND one of {OUTPUT_KINDS}")
    return name, kind


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
        "--calibration-sample",
        type=Path,
        help="the request sample's folder (samples/<engine>): calibrate with it once it holds"
        " --calibration-min-sample-rows rows, with --calibration until then",
    )
    parser.add_argument("--calibration-min-sample-rows", type=int, default=64)
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
    parser.add_argument(
        "--validation-sample", type=Path, help="as --calibration-sample, for the accuracy gate"
    )
    parser.add_argument("--validation-min-sample-rows", type=int, default=64)
    # Thresholds not given get the defaults of each output's kind (docs/build.md).
    parser.add_argument("--min-top1-agreement", type=_fraction)
    parser.add_argument("--max-mean-abs-error", type=float)
    parser.add_argument("--min-cosine-similarity", type=float)
    parser.add_argument(
        "--max-relative-error", type=float, help="mean abs error / mean |FP32 output|"
    )
    parser.add_argument(
        "--output-kind",
        action="append",
        default=[],
        type=_output_kind,
        metavar="NAME=KIND",
        help=f"what an output is ({', '.join(OUTPUT_KINDS)}); detected when not given",
    )
    parser.add_argument("--benchmark-batch-sizes", type=_batch_sizes, default=(1, 8))
    parser.add_argument("--benchmark-iterations", type=int, default=50)
    parser.add_argument(
        "--benchmark-seconds", type=float, default=2.0, help="time budget per batch size"
    )
    parser.add_argument(
        "--gpu-product", help="GPU product label of the target node (part of the key)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a scheduled rebuild: the serving plan's folder, measured against the new plan on"
        " the same device and inputs (the result's 'comparison')",
    )
    # Kubernetes reads /dev/termination-log; a runtime without per-container /dev (the local node
    # agent in tests) names another file through TRTOPS_TERMINATION_LOG.
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(os.environ.get("TRTOPS_TERMINATION_LOG", "/dev/termination-log")),
    )
    parser.add_argument("--json", action="store_true", help="also print the result JSON to stdout")


EXTRA_CLAIMS = Path("/mnt/claims")  # where the operator mounts a spec's other claims


def check_confined(flag: str, path: Path, storage: Path) -> None:
    """ConfigError ``PathOutsideClaim`` when ``path`` has a ``..`` segment, or lies on the
    storage claim or under ``/mnt/claims/<claim>`` but resolves (symlinks followed) outside
    that claim: a file on a claim that links to ``/proc/self/environ`` or the pod's secrets
    must not be read as a model. The operator refuses ``..`` too; this also catches links."""
    if ".." in path.parts:
        raise ConfigError("PathOutsideClaim", f"{flag} {path}: '..' is not allowed")
    roots = [storage]
    if path.is_relative_to(EXTRA_CLAIMS) and len(path.parts) > len(EXTRA_CLAIMS.parts):
        roots.append(EXTRA_CLAIMS / path.parts[len(EXTRA_CLAIMS.parts)])
    for root in roots:
        if path.is_relative_to(root) and not path.resolve().is_relative_to(root.resolve()):
            raise ConfigError(
                "PathOutsideClaim", f"{flag} {path} resolves outside its claim ({root})"
            )


def request_from_args(args: argparse.Namespace) -> Any:
    from trtops_worker.builder.accuracy import Thresholds
    from trtops_worker.builder.pipeline import BuildRequest
    from trtops_worker.builder.profiles import parse_profile

    if args.calibration_max_samples < 1 or args.validation_max_samples < 1:
        raise ConfigError("InvalidArgument", "sample limits must be >= 1")
    if args.workspace_mib < 1:
        raise ConfigError("InvalidArgument", "--workspace-mib must be >= 1")
    paths = ("model", "calibration", "validation", "calibration_sample", "validation_sample")
    for flag in (*paths, "baseline"):
        if getattr(args, flag) is not None:
            check_confined(f"--{flag.replace('_', '-')}", getattr(args, flag), args.storage)
    return BuildRequest(
        model=args.model,
        precision=args.precision,
        backend=args.backend,
        storage=args.storage,
        model_sha256=args.model_sha256,
        calibration=args.calibration,
        calibration_method=args.calibration_method,
        calibration_max_samples=args.calibration_max_samples,
        calibration_sample=args.calibration_sample,
        calibration_min_sample_rows=args.calibration_min_sample_rows,
        profiles=tuple(parse_profile(p) for p in args.profile),
        optimization_level=args.optimization_level,
        workspace_mib=args.workspace_mib,
        validation=args.validation,
        validation_max_samples=args.validation_max_samples,
        validation_sample=args.validation_sample,
        validation_min_sample_rows=args.validation_min_sample_rows,
        thresholds=Thresholds(
            args.min_top1_agreement,
            args.max_mean_abs_error,
            args.min_cosine_similarity,
            args.max_relative_error,
        ),
        output_kinds=dict(args.output_kind),
        benchmark_batch_sizes=args.benchmark_batch_sizes,
        benchmark_iterations=args.benchmark_iterations,
        benchmark_seconds=args.benchmark_seconds,
        gpu_product=args.gpu_product,
        baseline=args.baseline,
    )


_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_SPACE_TEXT = "No space left on device"  # strerror(ENOSPC), as libraries rewrap it


def storage_fault(exc: BaseException) -> StorageError | None:
    """A full or read-only volume, found anywhere in the exception's chain; None otherwise."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if (isinstance(seen, OSError) and seen.errno in _FULL) or _NO_SPACE_TEXT in str(seen):
            return StorageError("StorageFull", f"the storage volume is full: {seen}")
        if isinstance(seen, OSError) and seen.errno == errno.EROFS:
            return StorageError("StorageUnwritable", f"the storage volume is read-only: {seen}")
        seen = seen.__cause__ or seen.__context__
    return None


def exit_on_sigterm(termination_log: Path) -> Callable[[], None]:
    """On SIGTERM (Job deleted, pod evicted) remove this build's temporary folder and exit 143.

    A thread does it, woken through the signal wakeup fd: a Python-level handler would wait
    until the main thread leaves its native call, and a TensorRT build can stay in one for
    minutes, past the pod's grace period. Call from the main thread; the returned function
    puts the previous handling back (the tests run builds in-process)."""
    from trtops_worker.builder.store import abandon_active

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_handler = signal.signal(signal.SIGTERM, lambda *_: None)  # the thread below acts
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if not data:  # restored: the build is over
                os.close(read_fd)
                return
            if signal.SIGTERM in data:
                break
        removed = abandon_active()
        message = f"stopped by SIGTERM; removed {len(removed)} temporary folder(s)"
        logging.getLogger("trtops_worker.builder").warning("%s", message)
        write_termination_log(termination_log, compact(failure("internal", "Terminated", message)))
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="sigterm", daemon=True).start()

    def restore() -> None:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGTERM, old_handler)
        os.close(write_fd)

    return restore


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code = 0
    restore = (
        exit_on_sigterm(args.termination_log)
        if threading.current_thread() is threading.main_thread()
        else lambda: None
    )
    try:
        from trtops_worker.builder.pipeline import build

        result: dict[str, Any] = build(request_from_args(args))
    except BuildError as exc:
        if isinstance(exc, StorageError):  # a write that failed for want of space says so
            exc = storage_fault(exc) or exc
        logging.getLogger("trtops_worker.builder").error(
            "%s (%s): %s", exc.reason, exc.category, exc.message
        )
        result, code = failure(exc.category, exc.reason, exc.message), exc.exit_code
    except Exception as exc:  # the operator still gets a reason, the traceback goes to stderr
        fault = storage_fault(exc)
        if fault is not None:
            logging.getLogger("trtops_worker.builder").error("%s: %s", fault.reason, fault.message)
            result, code = failure(fault.category, fault.reason, fault.message), fault.exit_code
        else:
            logging.getLogger("trtops_worker.builder").exception("unexpected failure")
            result = failure("internal", "InternalError", f"{type(exc).__name__}: {exc}")
            code = 1
    finally:
        restore()
    text = compact(result)
    write_termination_log(args.termination_log, text)
    if args.json:
        print(text)
    return code
