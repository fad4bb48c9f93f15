"""The worker reads a spec's inputs only from inside their claim, whatever the claim holds: a
symlink on the claim that points at the pod's own files, or a ``..`` path, is refused with
``PathOutsideClaim`` before anything is opened (the operator refuses ``..`` too)."""

from __future__ import annotations

from pathlib import Path

from tests.builder.conftest import RunBuild, SampleModel


def test_a_link_out_of_the_claim_is_refused(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    """Before, the worker followed the link and read whatever it pointed to."""
    claim = tmp_path / "claim"
    claim.mkdir()
    outside = tmp_path / "pod-secret.onnx"
    outside.write_bytes(conv.model.read_bytes())  # a real model: only the place is wrong
    (claim / "model.onnx").symlink_to(outside)
    code, body = run_build("--model", claim / "model.onnx", "--precision", "fp32", storage=claim)
    assert (code, body["ok"], body["reason"]) == (12, False, "PathOutsideClaim"), body
    assert "resolves outside its claim" in str(body["message"])

    code, body = run_build(
        "--model", claim / "sub" / ".." / "model.onnx", "--precision", "fp32", storage=claim
    )
    assert body["reason"] == "PathOutsideClaim", body

    inside = claim / "real.onnx"
    inside.write_bytes(conv.model.read_bytes())
    (claim / "alias.onnx").symlink_to(inside)  # a link that stays on the claim is fine
    code, body = run_build("--model", claim / "alias.onnx", "--precision", "fp32", storage=claim)
    assert body["ok"] is True, body


def test_onnx_runtime_refuses_external_data_outside_the_model_directory(tmp_path: Path) -> None:
    """A model on the claim whose initializer names ``../secret.bin`` as external data: ONNX
    Runtime must refuse it, from a path and from bytes. Releases before the floor in
    pyproject.toml (onnxruntime>=1.27.0, see docs/security.md) read such files, and the worker
    serves what the model computes from them."""
    import numpy as np
    import onnxruntime as ort
    import pytest
    from onnx import TensorProto, helper, numpy_helper

    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    w = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "claim").mkdir()
    path = tmp_path / "claim" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    for source in (str(path), path.read_bytes()):
        with pytest.raises(Exception, match="escapes"):
            ort.InferenceSession(source, providers=["CPUExecutionProvider"])
