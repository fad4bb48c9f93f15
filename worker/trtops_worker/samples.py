"""Small, deterministic sample models for tests, benchmarks and the local demo.

The models are built with ``onnx.helper`` from seeded random weights, so every run produces the
same bytes (and therefore the same cache key) without downloading anything.

- :func:`conv_classifier` is a small CNN (Conv/Relu/Pool/Gemm) on ``input`` ``[N,3,H,W]``.
  ``width`` and ``depth`` scale its cost, which the canary tests use to serve a genuinely slower
  revision.
- :func:`transformer_classifier` is a one-block transformer encoder (embedding, self-attention,
  LayerNorm, MLP) on ``input_ids`` ``[N,S]`` (INT64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "calibration_inputs",
    "conv_classifier",
    "save",
    "transformer_classifier",
]

OPSET = 17


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def conv_classifier(
    *, width: int = 16, depth: int = 2, image_size: int = 32, classes: int = 10, seed: int = 0
) -> onnx.ModelProto:
    """A small image classifier with a dynamic batch dimension."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    prev, channels = "input", 3
    for i in range(depth):
        out_ch = width * (2 ** min(i, 3))
        w = rng.normal(0, np.sqrt(2.0 / (channels * 9)), (out_ch, channels, 3, 3)).astype(
            np.float32
        )
        b = rng.normal(0, 0.05, (out_ch,)).astype(np.float32)
        inits += [_init(f"conv{i}.w", w), _init(f"conv{i}.b", b)]
        stride = 2 if i % 2 == 1 else 1
        nodes.append(
            helper.make_node(
                "Conv",
                [prev, f"conv{i}.w", f"conv{i}.b"],
                [f"conv{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        prev, channels = f"relu{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1))
    fc_w = rng.normal(0, np.sqrt(1.0 / channels), (classes, channels)).astype(np.float32)
    fc_b = np.zeros(classes, np.float32)
    inits += [_init("fc.w", fc_w), _init("fc.b", fc_b)]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "conv_classifier",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["N", 3, image_size, image_size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _finish(graph)


def transformer_classifier(
    *, vocab: int = 256, seq_len: int = 16, hidden: int = 32, classes: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """A one-block transformer encoder with mean pooling and a linear head."""
    rng = np.random.default_rng(seed)

    def dense(name: str, fan_in: int, fan_out: int) -> None:
        inits.append(
            _init(
                f"{name}.w",
                rng.normal(0, np.sqrt(1.0 / fan_in), (fan_in, fan_out)).astype(np.float32),
            )
        )
        inits.append(_init(f"{name}.b", rng.normal(0, 0.02, (fan_out,)).astype(np.float32)))

    inits: list[TensorProto] = [
        _init("embed", rng.normal(0, 1.0, (vocab, hidden)).astype(np.float32)),
        _init("pos", rng.normal(0, 0.1, (1, seq_len, hidden)).astype(np.float32)),
        _init("ln1.g", np.ones(hidden, np.float32)),
        _init("ln1.b", np.zeros(hidden, np.float32)),
        _init("ln2.g", np.ones(hidden, np.float32)),
        _init("ln2.b", np.zeros(hidden, np.float32)),
        _init("scale", np.array(1.0 / np.sqrt(hidden), np.float32)),
    ]
    for name, fi, fo in [
        ("q", hidden, hidden),
        ("k", hidden, hidden),
        ("v", hidden, hidden),
        ("o", hidden, hidden),
        ("ff1", hidden, 4 * hidden),
        ("ff2", 4 * hidden, hidden),
        ("head", hidden, classes),
    ]:
        dense(name, fi, fo)

    def linear(x: str, name: str) -> str:
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"]))
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [name]))
        return name

    nodes: list[onnx.NodeProto] = [
        helper.make_node("Gather", ["embed", "input_ids"], ["tok"]),
        helper.make_node("Add", ["tok", "pos"], ["x0"]),
        helper.make_node("LayerNormalization", ["x0", "ln1.g", "ln1.b"], ["h0"], axis=-1),
    ]
    q, k, v = linear("h0", "q"), linear("h0", "k"), linear("h0", "v")
    nodes += [
        helper.make_node("Transpose", [k], ["kT"], perm=[0, 2, 1]),
        helper.make_node("MatMul", [q, "kT"], ["scores_raw"]),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", v], ["ctx"]),
    ]
    o = linear("ctx", "o")
    nodes += [
        helper.make_node("Add", ["x0", o], ["x1"]),
        helper.make_node("LayerNormalization", ["x1", "ln2.g", "ln2.b"], ["h1"], axis=-1),
    ]
    f1 = linear("h1", "ff1")
    nodes.append(helper.make_node("Relu", [f1], ["ff1.act"]))
    f2 = linear("ff1.act", "ff2")
    nodes += [
        helper.make_node("Add", ["x1", f2], ["x2"]),
        helper.make_node("ReduceMean", ["x2"], ["pooled"], axes=[1], keepdims=0),
    ]
    nodes.append(helper.make_node("MatMul", ["pooled", "head.w"], ["head.mm"]))
    nodes.append(helper.make_node("Add", ["head.mm", "head.b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "transformer_classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", seq_len])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="trtops.samples"
    )
    model.ir_version = 8  # readable by every ONNX Runtime release this project supports
    onnx.checker.check_model(model, full_check=True)
    return model


def calibration_inputs(
    model: onnx.ModelProto, samples: int, *, seed: int = 1
) -> dict[str, np.ndarray]:
    """Representative random inputs for ``model`` (one array per input, batch ``samples``)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        dims = [samples if not d.dim_value else d.dim_value for d in inp.type.tensor_type.shape.dim]
        if inp.type.tensor_type.elem_type == TensorProto.INT64:
            out[inp.name] = rng.integers(0, 256, dims, dtype=np.int64)
        else:
            # Per-sample, per-channel offsets survive global pooling, so predictions differ by
            # sample, which an accuracy gate needs to be meaningful.
            x = rng.normal(0, 1, dims) + rng.normal(0, 1.5, dims[:2] + [1] * (len(dims) - 2))
            out[inp.name] = x.astype(np.float32)
    return out


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
