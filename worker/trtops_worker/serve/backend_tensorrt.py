"""TensorRT 11 plan execution on one CUDA stream. The ONLY module importing ``tensorrt``/``cuda``.

Written against the TensorRT 11 name-based I/O API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and
``cuda.bindings.runtime``. It cannot run on a machine without TensorRT and a GPU, so it is kept to
the calls themselves: validation, batching and fallback live elsewhere and are tested on ONNX
Runtime. Any CUDA or TensorRT failure while serving raises :class:`DeviceError`, which the data
plane turns into a CPU fallback when that is enabled.

The build's accuracy gate and self-benchmark run a plan through this same class (one way to
execute a plan).

Compatibility guard: a plan only runs on the TensorRT version and GPU compute capability it was
built for ("the engine plan file is generated on an incompatible device"). At load, the
versions recorded in the plan's ``metadata.json`` (``versions.tensorrt``,
``device.computeCapability``) are compared with this process's (:func:`environment`); a
mismatch raises :class:`PlanIncompatible` before TensorRT touches the file, and the server exits
with that as its termination message (no CPU fallback: the operator builds a plan for this GPU).
TensorRT versions match on major.minor.patch (the build number may differ).
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeviceError, InvalidInput
from .types import TensorSpec, datatype_of

__all__ = [
    "PlanIncompatible",
    "PlanTarget",
    "TensorRTBackend",
    "check_plan",
    "environment",
    "recorded_target",
]


@dataclass(frozen=True)
class PlanTarget:
    """What a plan is tied to: TensorRT version (``"11.2.1.2"``) and compute capability
    (``"9.0"``); ``gpu`` is the device name, for messages only."""

    tensorrt_version: str
    compute_capability: str
    gpu: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "tensorrtVersion": self.tensorrt_version,
            "computeCapability": self.compute_capability,
            "gpu": self.gpu,
        }


class PlanIncompatible(Exception):
    """The plan was built for another TensorRT version or compute capability than this pod's."""

    reason = "PlanIncompatible"

    def __init__(self, plan: PlanTarget, pod: PlanTarget) -> None:
        self.plan, self.pod = plan, pod
        super().__init__(
            f"the plan was built with TensorRT {plan.tensorrt_version} for compute capability"
            f" {plan.compute_capability}{f' ({plan.gpu})' if plan.gpu else ''}; this pod has"
            f" TensorRT {pod.tensorrt_version} on compute capability {pod.compute_capability}"
            f"{f' ({pod.gpu})' if pod.gpu else ''}: it needs a plan built for this GPU and"
            " TensorRT"
        )


def recorded_target(plan: Path) -> PlanTarget | None:
    """The target recorded next to ``plan`` (``metadata.json`` of its build folder); ``None``
    where there is no metadata or it records no TensorRT version and compute capability."""
    try:
        meta = json.loads((plan.parent / "metadata.json").read_text())
        version = str(meta["versions"]["tensorrt"])
        device = meta["device"]
        capability = str(device["computeCapability"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return PlanTarget(version, capability, str(device.get("gpuProduct") or ""))


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def check_plan(plan: PlanTarget | None, pod: PlanTarget) -> None:
    """Raise :class:`PlanIncompatible` unless ``plan`` can run in ``pod`` (unknown: allowed)."""
    if plan is None:
        return
    if (
        _release(plan.tensorrt_version) != _release(pod.tensorrt_version)
        or plan.compute_capability != pod.compute_capability
    ):
        raise PlanIncompatible(plan, pod)


def environment() -> PlanTarget:
    """This process's TensorRT version and device 0's compute capability; ImportError without
    TensorRT, DeviceError without a GPU."""
    trt: Any = importlib.import_module("tensorrt")
    cudart: Any = importlib.import_module("cuda.bindings.runtime")
    props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return PlanTarget(
        str(trt.__version__), f"{props.major}.{props.minor}", str(name).strip("\x00 ")
    )


def _check(result: Any, what: str) -> Any:
    """cuda-python returns ``(err, *values)``; raise on any error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeviceError(f"{what} failed: CUDA error {int(err)} ({err})")
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTBackend:
    name = "tensorrt"
    platform = "tensorrt_plan"
    max_concurrent_runs = 1  # one execution context

    def __init__(self, plan: Path) -> None:
        check_plan(recorded_target(plan), environment())  # before TensorRT reads the file
        # Lazy imports: importing this module must not need TensorRT; constructing it does.
        self._trt: Any = importlib.import_module("tensorrt")
        self._cudart: Any = importlib.import_module("cuda.bindings.runtime")
        trt, cudart = self._trt, self._cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise DeviceError(
                f"TensorRT could not deserialize {plan} (wrong TensorRT version or GPU?)"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise DeviceError("TensorRT could not create an execution context")
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity bytes)
        self._lock = threading.Lock()  # one execution context: one batch at a time
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor)))
            spec = TensorSpec(
                tensor,
                datatype_of(np.empty(0, dtype)),
                tuple(int(d) for d in self._engine.get_tensor_shape(tensor)),
            )
            if self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
            else:
                outputs.append(spec)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._dtypes = {s.name: self._np_dtype(s.name) for s in (*inputs, *outputs)}

    def _np_dtype(self, tensor: str) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(tensor)))
        return dtype

    def _device_buffer(self, tensor: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(tensor, (0, 0))
        if nbytes > capacity:
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self._buffers[tensor] = (ptr, max(nbytes, 1))
        return ptr

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            host_inputs = []
            for spec in self.inputs:
                array = np.ascontiguousarray(inputs[spec.name], dtype=self._dtypes[spec.name])
                host_inputs.append(array)  # keep alive until the stream is synchronised
                if not self._context.set_input_shape(spec.name, array.shape):
                    raise InvalidInput(
                        f"input '{spec.name}': shape {list(array.shape)} is outside"
                        " the engine's optimization profile"
                    )
                ptr = self._device_buffer(spec.name, array.nbytes)
                _check(
                    cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self._stream),
                    "H2D copy",
                )
                self._context.set_tensor_address(spec.name, ptr)
            results: dict[str, np.ndarray] = {}
            for spec in self.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise DeviceError(f"output '{spec.name}' has a data-dependent shape {shape}")
                out = np.empty(shape, dtype=self._dtypes[spec.name])
                ptr = self._device_buffer(spec.name, out.nbytes)
                self._context.set_tensor_address(spec.name, ptr)
                results[spec.name] = out
            if not self._context.execute_async_v3(self._stream):
                raise DeviceError("TensorRT execute_async_v3 failed")
            for name, out in results.items():
                ptr, _ = self._buffers[name]
                _check(
                    cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream),
                    "D2H copy",
                )
            _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            return results

    def close(self) -> None:
        with self._lock:
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            self._buffers.clear()
            self._cudart.cudaStreamDestroy(self._stream)
