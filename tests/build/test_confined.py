"""The worker reads a spec's inputs only from inside their claim, whatever the claim holds: a
symlink on the claim that points at the pod's own files, or a ``..`` path, is refused with
``PathOutsideClaim`` before anything is opened (the operator refuses ``..`` too)."""

from __future__ import annotations

from pathlib import Path

from tests.build.conftest import RunBuild, SampleModel


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
