"""The one small interface every backend implements, and loading with CPU fallback.

A backend runs a whole batch synchronously in the calling thread (the batcher calls it from its
worker thread). Backend modules are imported lazily so that ``onnxruntime`` and ``tensorrt`` are
only loaded by the process that uses them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .busy import BusyBoard
from .types import TensorSpec

__all__ = ["Backend", "LoadedBackend", "load_backend", "load_onnxruntime", "load_tensorrt"]

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str  # "onnxruntime" | "tensorrt": the ``backend`` metric label
    platform: str  # OIP v2 platform string: "onnxruntime_onnx" | "tensorrt_plan"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # How many batches ``infer`` may run at once from different threads (``--instances`` caps).
    max_concurrent_runs: int

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly merged) batch; raise ``DeviceError`` when the device itself fails."""
        ...

    def close(self) -> None: ...


@dataclass
class LoadedBackend:
    backend: Backend
    fallback_reason: str | None = None  # set when the CPU fallback replaced the requested backend


def load_onnxruntime(
    model: Path,
    *,
    intra_op_threads: int = 0,
    spinning: bool = True,
    sessions: int = 1,
    wide_threads: int = 0,
    board: BusyBoard | None = None,
) -> Backend:
    """``sessions`` sessions of ``intra_op_threads`` threads; with ``board`` and
    ``wide_threads`` > 1 also a wide session for batches that run while no other front end
    computes (backend_onnxruntime.py)."""
    from .backend_onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        model,
        intra_op_threads=intra_op_threads,
        spinning=spinning,
        sessions=sessions,
        wide_threads=wide_threads,
        board=board,
    )


def load_tensorrt(plan: Path) -> Backend:
    from .backend_tensorrt import TensorRTBackend

    return TensorRTBackend(plan)


def load_backend(
    kind: str,
    model: Path,
    *,
    fallback_model: Path | None = None,
    cpu_fallback: bool = False,
    intra_op_threads: int = 0,
    spinning: bool = True,
    sessions: int = 1,
    wide_threads: int = 0,
    board: BusyBoard | None = None,
) -> LoadedBackend:
    """Load ``kind``; if TensorRT cannot load and fallback is on, load ONNX Runtime instead
    (``sessions`` independent ORT sessions of ``intra_op_threads`` threads each; the wide
    session, ``wide_threads`` and ``board``, only when ONNX Runtime is what was asked for)."""

    def onnxruntime(path: Path, wide_threads: int = 0, board: BusyBoard | None = None) -> Backend:
        return load_onnxruntime(
            path,
            intra_op_threads=intra_op_threads,
            spinning=spinning,
            sessions=sessions,
            wide_threads=wide_threads,
            board=board,
        )

    if kind == "onnxruntime":
        return LoadedBackend(onnxruntime(model, wide_threads, board))
    if kind != "tensorrt":
        raise ValueError(f"unknown backend {kind!r}")
    try:
        return LoadedBackend(load_tensorrt(model))
    except Exception as e:  # ImportError, CUDA or deserialisation failure: all mean "no GPU path"
        from .backend_tensorrt import PlanIncompatible

        # A plan for another GPU or TensorRT is no missing GPU path: the pod exits and says so,
        # and the operator builds a plan for this target (serving on CPU would hide that).
        if isinstance(e, PlanIncompatible) or not (cpu_fallback and fallback_model is not None):
            raise
        reason = f"TensorRT backend failed to load: {type(e).__name__}: {e}"
        log.warning("%s; falling back to ONNX Runtime on %s", reason, fallback_model)
        return LoadedBackend(
            onnxruntime(fallback_model),
            fallback_reason=reason,
        )
