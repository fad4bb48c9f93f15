"""The precision stage: FP32 ONNX in, precision-converted ONNX out, on CPU, for any backend.

TensorRT 11 networks are strongly typed, so precision is decided here, in the ONNX file, with
NVIDIA ModelOpt (the path NVIDIA documents for TensorRT 11):

- fp32, tf32: the model as is (TF32 is only a TensorRT builder flag),
- fp16, bf16: ModelOpt AutoCast, which keeps numerically sensitive nodes in FP32 and the graph's
  inputs and outputs in their original types (``keep_io_types``) so clients need not change,
- int8, fp8: ModelOpt post-training quantization, which calibrates activation ranges on the
  given data (ONNX Runtime on CPU) and writes Q/DQ nodes. ``high_precision_dtype="fp32"``
  because the Python API's default (fp16) would silently also halve everything unquantized.

ModelOpt is imported lazily (it pulls torch: seconds of import time), only for the precisions
that need it. Its calibrator offers ``entropy`` and ``max``; it quietly treats any other name as
``max``, so ``percentile`` is refused here instead of being honoured in name only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from trtops_worker.builder.errors import BackendError, CalibrationError, EngineError

__all__ = [
    "MODELOPT_CALIBRATION_METHODS",
    "QUANTIZED",
    "check_calibration_method",
    "convert",
    "modelopt_version",
]

QUANTIZED = ("int8", "fp8")
MODELOPT_CALIBRATION_METHODS = ("entropy", "max")


def modelopt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Drop the calibrators' prints and progress bars (a line per sample): stdout carries the
    JSON result and the log should stay readable. Logging is unaffected: its handlers keep the
    stream they were created with, so ModelOpt's warnings and errors still reach stderr."""
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        yield


def check_calibration_method(precision: str, method: str) -> None:
    if method not in MODELOPT_CALIBRATION_METHODS:
        offered = " or ".join(MODELOPT_CALIBRATION_METHODS)
        raise CalibrationError(
            "CalibrationMethodUnsupported",
            f"ModelOpt calibrates {precision} with {offered}; {method!r} is not offered",
        )


def _has_qdq(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _require_modelopt(precision: str) -> None:
    if modelopt_version() is None:
        raise BackendError(
            "BackendUnavailable",
            f"precision {precision} needs NVIDIA ModelOpt: pip install 'trtops[modelopt]'",
        )


def convert(
    source: Path,
    output: Path,
    precision: str,
    *,
    calibration: dict[str, np.ndarray] | None = None,
    calibration_method: str = "entropy",
) -> None:
    """Write the ``precision`` version of ``source`` to ``output`` (in the build's temp folder).

    ModelOpt writes scratch files beside the model it reads, so it works on a copy in a scratch
    folder that is removed afterwards: only ``output`` is left behind.
    """
    if precision in ("fp32", "tf32"):
        shutil.copyfile(source, output)
        return
    _require_modelopt(precision)
    scratch = output.parent / "scratch"
    scratch.mkdir()
    local, produced = scratch / "source.onnx", scratch / "converted.onnx"
    shutil.copyfile(source, local)
    try:
        with _quiet():
            if precision in ("fp16", "bf16"):
                from modelopt.onnx.autocast import convert_to_mixed_precision

                model = convert_to_mixed_precision(
                    onnx_path=str(local), low_precision_type=precision, keep_io_types=True
                )
                onnx.save(model, str(produced))
            elif precision in QUANTIZED:
                if calibration is None:  # the pipeline checks first; this guards direct callers
                    raise CalibrationError(
                        "CalibrationRequired", f"{precision} needs calibration data"
                    )
                check_calibration_method(precision, calibration_method)
                import modelopt.onnx.quantization as moq

                moq.quantize(
                    str(local),
                    quantize_mode=precision,
                    calibration_data=calibration,
                    calibration_method=calibration_method,
                    calibration_eps=["cpu"],
                    high_precision_dtype="fp32",
                    output_path=str(produced),
                    log_level="WARNING",
                )
            else:
                raise ValueError(f"unknown precision {precision!r}")
    except (CalibrationError, BackendError, EngineError):
        raise
    except Exception as exc:
        logging.getLogger(__name__).exception("precision conversion failed")
        raise EngineError(
            "PrecisionConversionFailed",
            f"ModelOpt could not convert the model to {precision}: {type(exc).__name__}: {exc}",
        ) from exc
    else:
        if not produced.is_file():
            raise EngineError("PrecisionConversionFailed", f"ModelOpt wrote no {precision} model")
        if precision in QUANTIZED and not _has_qdq(produced):
            # ModelOpt skips layers it cannot quantize (e.g. FP8 Conv with odd channel counts) and
            # may end with none: an "fp8" plan that is really FP32 must not be delivered as fp8.
            raise EngineError(
                "PrecisionConversionFailed",
                f"ModelOpt quantized no layer of this model to {precision} (no Q/DQ nodes)",
            )
        produced.replace(output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
