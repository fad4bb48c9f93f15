"""Test models for the data-plane tests, built with ``onnx.helper`` (no downloads).

- :func:`identity_model`: one Identity per datatype, ``x_<DT>`` ``[N, 3]`` -> ``y_<DT>``, so a
  request carries many datatypes at once and each comes back as the model returned it.
  ``NUMERIC_DATATYPES`` (every one but BYTES) and ``TYPED_DATATYPES`` (every one gRPC typed
  contents carry, BYTES included) cover them all; ONNX Runtime's Python API cannot run string
  inputs and bfloat16 in one model.
- :func:`lookup_model`: an embedding lookup (Gather over a 10-row table) on int64 ``ids``
  ``[N, 1]``; an id outside -10..9 makes ONNX Runtime refuse the run (INVALID_ARGUMENT).
- :func:`parse_model`: a string-to-int64 Cast on ``text`` ``[N, 1]``, as in Triton's string
  examples; the empty string makes ONNX Runtime fail (RUNTIME_EXCEPTION ``stoll``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "ALL_DATATYPES",
    "NUMERIC_DATATYPES",
    "TYPED_DATATYPES",
    "identity_model",
    "lookup_model",
    "parse_model",
]

ONNX_TYPE = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}
ALL_DATATYPES = tuple(ONNX_TYPE)
# gRPC typed ``contents`` have no 16-bit float field: FP16 and BF16 travel raw only.
TYPED_DATATYPES = tuple(d for d in ALL_DATATYPES if d not in ("FP16", "BF16"))
NUMERIC_DATATYPES = tuple(d for d in ALL_DATATYPES if d != "BYTES")

TABLE = np.arange(40, dtype=np.float32).reshape(10, 4) / 8


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def identity_model(path: Path, datatypes: tuple[str, ...]) -> Path:
    nodes, inputs, outputs = [], [], []
    for d in datatypes:
        nodes.append(helper.make_node("Identity", [f"x_{d}"], [f"y_{d}"]))
        inputs.append(helper.make_tensor_value_info(f"x_{d}", ONNX_TYPE[d], ["N", 3]))
        outputs.append(helper.make_tensor_value_info(f"y_{d}", ONNX_TYPE[d], ["N", 3]))
    return _save(helper.make_graph(nodes, "identity", inputs, outputs), path)


def lookup_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"])],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["N", 1, 4])],
        [numpy_helper.from_array(TABLE, "table")],
    )
    return _save(graph, path)


def parse_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["text"], ["number"], to=TensorProto.INT64)],
        "parse",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("number", TensorProto.INT64, ["N", 1])],
    )
    return _save(graph, path)
