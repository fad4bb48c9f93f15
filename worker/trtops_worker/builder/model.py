"""Reading the input model: digest, parse, check, and describe its inputs and outputs.

The digest is checked before parsing: a pinned sha256 says "this exact file", so a mismatch is
reported as such even when the wrong file happens to be a valid model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtops_worker.builder.errors import ModelError

__all__ = ["LoadedModel", "TensorSpec", "describe", "load_model", "sha256_file"]

# ONNX element type -> (Open Inference Protocol v2 datatype, numpy dtype)
_DTYPES: dict[int, tuple[str, str]] = {
    onnx.TensorProto.FLOAT: ("FP32", "float32"),
    onnx.TensorProto.FLOAT16: ("FP16", "float16"),
    onnx.TensorProto.BFLOAT16: ("BF16", "bfloat16"),
    onnx.TensorProto.DOUBLE: ("FP64", "float64"),
    onnx.TensorProto.INT8: ("INT8", "int8"),
    onnx.TensorProto.INT16: ("INT16", "int16"),
    onnx.TensorProto.INT32: ("INT32", "int32"),
    onnx.TensorProto.INT64: ("INT64", "int64"),
    onnx.TensorProto.UINT8: ("UINT8", "uint8"),
    onnx.TensorProto.UINT16: ("UINT16", "uint16"),
    onnx.TensorProto.UINT32: ("UINT32", "uint32"),
    onnx.TensorProto.UINT64: ("UINT64", "uint64"),
    onnx.TensorProto.BOOL: ("BOOL", "bool"),
    onnx.TensorProto.STRING: ("BYTES", "object"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: OIP v2 datatype and shape, ``-1`` for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        for oip, np_name in _DTYPES.values():
            if oip == self.datatype and np_name != "bfloat16":
                return np.dtype(np_name)
        raise ValueError(f"no numpy dtype for {self.datatype}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    sha256: str
    proto: onnx.ModelProto
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise ModelError("InvalidModel", f"graph input/output {value.name!r} is not a tensor")
    datatype = _DTYPES.get(tensor.elem_type, ("UNKNOWN", ""))[0]
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim
    )
    return TensorSpec(value.name, datatype, shape)


def describe(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The real inputs (initializers listed as inputs by old exporters are left out) and outputs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_spec(v) for v in model.graph.output)
    return inputs, outputs


def load_model(path: Path, expected_sha256: str | None = None) -> LoadedModel:
    """Load and check ``path``; every way it can be unusable is a :class:`ModelError`."""
    if not path.is_file():
        raise ModelError("ModelNotFound", f"model file {path} does not exist")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ModelError(
            "ModelDigestMismatch",
            f"model {path.name} has sha256 {digest}, the pin says {expected_sha256.lower()}",
        )
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError: all mean unusable
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(
            "InvalidModel",
            f"{path.name} is not a valid ONNX model ({type(exc).__name__}: {first_line})",
        ) from exc
    inputs, outputs = describe(proto)
    if not inputs or not outputs:
        raise ModelError("InvalidModel", f"{path.name} has no graph inputs or no graph outputs")
    unknown = [s.name for s in inputs + outputs if s.datatype == "UNKNOWN"]
    if unknown:
        raise ModelError("InvalidModel", f"{path.name}: unsupported element type for {unknown}")
    return LoadedModel(path=path, sha256=digest, proto=proto, inputs=inputs, outputs=outputs)
