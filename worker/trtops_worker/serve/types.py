"""Plain data shared by the backends, the data plane and the transports (no I/O, no frameworks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "DATATYPE_TO_NUMPY",
    "InferRequest",
    "InferResponse",
    "TensorSpec",
    "datatype_of",
]

# OIP v2 datatype names (case-sensitive) -> numpy dtype. BYTES travels as an object array of
# ``str`` (ONNX string tensors are text: a ``bytes`` element would reach the model as its printed
# form ``"b'a'"``); BF16 is ml_dtypes' bfloat16 (numpy has none; onnx depends on ml_dtypes).
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_DATATYPE = {dt: name for name, dt in DATATYPE_TO_NUMPY.items()}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name of ``array`` (unicode and bytes arrays count as BYTES)."""
    if array.dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no OIP v2 datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the metadata endpoint reports it; -1 marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class InferRequest:
    """A decoded, validated inference request: numpy inputs in the model's own dtypes."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[str] | None = None  # requested output names; None = all
    binary_outputs: frozenset[str] = frozenset()  # HTTP binary-data extension: send these raw
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
