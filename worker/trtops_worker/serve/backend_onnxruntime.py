"""ONNX Runtime on the CPU: the CPU backend and the TensorRT fallback. The only module importing
``onnxruntime`` on the serving path."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .busy import BusyBoard
from .errors import BackendError, from_onnxruntime
from .types import DATATYPE_TO_NUMPY, TensorSpec

__all__ = ["RUN_THREAD_NAME", "OnnxRuntimeBackend"]

# The OS name of the threads that call ``run`` (top -H, py-spy, /proc/<pid>/task/*/comm): with
# one-thread instances all inference happens on them, so their CPU is the inference CPU.
RUN_THREAD_NAME = "trtops-ort-run"
_thread = threading.local()


def _name_this_thread(name: str) -> None:
    _thread.named = True
    if threading.current_thread() is threading.main_thread():  # the event loop's: keep its name
        return
    with contextlib.suppress(OSError, AttributeError):  # Linux only; a name is a nicety
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


_ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
_BF16 = DATATYPE_TO_NUMPY["BF16"]
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16


def _feed(array: np.ndarray) -> Any:
    """ORT's Python API has no numpy type for bfloat16: such inputs go in as OrtValues."""
    if array.dtype == _BF16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(array).view(np.uint16), _ONNX_BFLOAT16
        )
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def _fetch(value: ort.OrtValue) -> np.ndarray:
    """An output OrtValue as numpy; bfloat16 is copied out of ORT's CPU buffer by hand."""
    if value.data_type() != "tensor(bfloat16)":
        return np.asarray(value.numpy())
    shape = value.shape()
    raw = ctypes.string_at(value.data_ptr(), 2 * int(np.prod(shape)))
    return np.frombuffer(raw, dtype=np.uint16).view(_BF16).reshape(shape)


def _spec(arg: ort.NodeArg) -> TensorSpec:
    try:
        datatype = _ORT_TO_DATATYPE[arg.type]
    except KeyError:
        raise BackendError(f"tensor '{arg.name}' has unsupported type {arg.type}") from None
    # Symbolic ("N") and unknown (None) dimensions are dynamic: -1 in OIP metadata.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntimeBackend:
    """``sessions`` independent ORT sessions of the same model, each with its own thread pool.

    A run checks a free session out and back in, so ``sessions`` batches compute at once without
    sharing a pool: one pool shared by concurrent runs lets only part of the cores compute (16
    cores: one 16-thread session ran 8.5k infer/s, 16 one-thread sessions 11.3k). Each session
    holds its own copy of the weights (memory grows with ``sessions``).
    """

    name = "onnxruntime"
    platform = "onnxruntime_onnx"

    def __init__(
        self,
        model: Path,
        *,
        intra_op_threads: int = 0,
        spinning: bool = True,
        sessions: int = 1,
        wide_threads: int = 0,
        board: BusyBoard | None = None,
    ) -> None:
        def session(threads: int, spinning: bool = spinning) -> ort.InferenceSession:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads  # 0 = one per core
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # ORT's default: pool threads spin briefly between parallel regions instead of
            # sleeping. Measured on the 2-core benchmark machine it cut the c=1 p50 by 0.2-0.4
            # ms and did not cost saturated throughput. `serve` turns it off under a cgroup CPU
            # quota (spinning burns the quota) or with --no-intra-op-spinning.
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if spinning else "0"
            )
            return ort.InferenceSession(
                str(model), sess_options=options, providers=["CPUExecutionProvider"]
            )

        self._sessions = [session(intra_op_threads) for _ in range(max(1, sessions))]
        # The wide session: a batch that starts while no other front end of the pod has
        # requests in progress (``board``) runs on ``wide_threads`` threads instead of one. A
        # lone request then takes the idle cores (16 cores, 32 px, batch 1: 1.34 ms on one
        # thread, 0.28 ms on 16); under load every front end is busy and batches keep their
        # one-thread sessions.
        # Its pool never spins. Spinning during a run only (session.force_spinning_stop) was
        # measured on the 16-core device, batch 1 on 16 threads, runs 2 ms apart, 3 rounds of
        # 300: p50 0.47-0.52 vs 0.57-0.60 ms (32 px), 1.00-1.08 vs 1.17-1.27 ms (64 px), but
        # with one busy process beside it p99 6.4-7.2 ms in 5 of 6 rounds vs 0.9-3.6 ms: a
        # spinning thread that shares its core waits out a time slice, and all others wait.
        wanted = wide_threads > 1 and board is not None
        if wanted and sessions > 1:
            raise ValueError("a wide session needs one instance: its batches run one at a time")
        self._wide = session(wide_threads, spinning=False) if wanted else None
        self._board = board
        self.wide_threads = wide_threads if self._wide is not None else 0
        self.last_run_wide = False  # one batch at a time when there is a wide session
        self._pool_cpu = 0.0  # CPU of the wide session's pool threads, seconds
        first = self._sessions[0]
        self.inputs = tuple(_spec(a) for a in first.get_inputs())
        self.outputs = tuple(_spec(a) for a in first.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        # The batcher never runs more batches at once than there are sessions; a run beyond
        # that (warm-up beside a batch, the fallback switch) shares one, which ORT allows.
        self.max_concurrent_runs = len(self._sessions)
        self._free = list(self._sessions)
        self._lock = threading.Lock()
        self._bf16 = any(t.datatype == "BF16" for t in (*self.inputs, *self.outputs))
        if self._bf16 and any(t.datatype == "BYTES" for t in self.inputs):
            # bfloat16 outputs need OrtValue runs, which take no string inputs (ORT 1.2x-1.3x)
            raise BackendError(
                "ONNX Runtime's Python API cannot run a model with both string inputs and"
                " bfloat16 tensors; split the model or cast the bfloat16 tensors to float"
            )

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not getattr(_thread, "named", False):
            _name_this_thread(RUN_THREAD_NAME)
        if self._board is not None and self._wide is not None:
            return self._infer_on_board(inputs, self._board, self._wide)
        with self._lock:
            session = self._free.pop() if self._free else self._sessions[0]
        try:
            return self._run(session, inputs)
        finally:
            with self._lock:
                if len(self._free) < len(self._sessions) and session not in self._free:
                    self._free.append(session)

    def _infer_on_board(
        self, inputs: Mapping[str, np.ndarray], board: BusyBoard, wide: ort.InferenceSession
    ) -> dict[str, np.ndarray]:
        """One session and one batch at a time: the wide session when no other front end has
        requests in progress, else the one-thread session."""
        self.last_run_wide = board.alone()
        if not self.last_run_wide:
            return self._run(self._sessions[0], inputs)
        process, thread = time.process_time(), time.thread_time()
        try:
            return self._run(wide, inputs)
        finally:  # the pool threads' share: the process's CPU beyond this thread's
            pool = (time.process_time() - process) - (time.thread_time() - thread)
            self._pool_cpu += max(0.0, pool)

    def warm_up(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Run ``inputs`` once on every session, the wide one too: each session's first runs
        allocate (2-4x a warm run here), and a warm-up batch, alone on the board, ran only the
        wide session, leaving cold the one-thread session that every batch under load runs
        on. Raises what ``infer`` raises."""
        for session in (*self._sessions, *(() if self._wide is None else (self._wide,))):
            self._run(session, inputs)

    def cpu_seconds(self) -> float:
        """CPU seconds of the calling thread plus the wide session's pool threads so far (the
        batcher's inference CPU clock): with the wide session, part of a run's CPU is spent
        on its pool's threads. Over-counts by whatever else the process ran during wide runs
        (its other threads are idle then: the event loop is the one calling)."""
        return time.thread_time() + self._pool_cpu

    def _run(
        self, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        try:
            if self._bf16:
                values = session.run_with_ort_values(
                    self._output_names, {k: _feed(v) for k, v in inputs.items()}
                )
                results = [_fetch(v) for v in values]
            else:
                results = session.run(self._output_names, dict(inputs))
        except Exception as e:  # ORT raises its own exception types; errors.py classifies them
            raise from_onnxruntime(e) from e
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._sessions.clear()
        self._free.clear()
        self._wide = None
