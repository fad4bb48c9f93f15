"""Real ``trtops-worker serve`` processes on loopback, on ONNX Runtime with the sample models.

Servers run as subprocesses (the real CLI, signals and exit codes included) on free ports; each
fixture waits for readiness and stops its server with SIGTERM afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trtops_worker import samples

from tests.support.worker import Server, start_server


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    samples.save(samples.conv_classifier(width=8), d / "conv.onnx")
    samples.save(samples.conv_classifier(width=64, depth=4, image_size=64), d / "slow.onnx")
    samples.save(samples.transformer_classifier(), d / "transformer.onnx")
    # A model with a string input, for BYTES: Identity passes the strings through.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "strings.onnx"))
    return d


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The conv model with dynamic batching on; shared by the read-mostly tests. One front end:
    Triton's statistics (test_triton.py) are per front end, and this server's are checked."""
    s = start_server(
        tmp_path_factory.mktemp("serve"),
        "--front-ends",
        "1",
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--revision",
        "r1",
        "--precision",
        "fp32",
        "--max-batch-size",
        "8",
        "--max-queue-delay-us",
        "20000",
        "--max-queue-size",
        "64",
        "--max-body-bytes",
        "1000000",
    )
    yield s
    assert s.stop() == 0


def conv_input(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (rows, 3, 32, 32)).astype(np.float32)


def infer_body(x: np.ndarray, name: str = "input", **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        **extra,
    }
