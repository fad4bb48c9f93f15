"""A scheduled rebuild measures the new plan against the serving one in the same build (real
ONNX Runtime, real INT8 calibration): the numbers the operator's regression gate judges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.builder.conftest import RunBuild, SampleModel, save_npz

LAX = ("--min-top1-agreement", "0", "--min-cosine-similarity", "-1")  # the build gate off


def test_the_comparison_shows_a_badly_calibrated_plan_losing_accuracy(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    code, serving = run_build(
        "--model", conv.model, "--precision", "int8", "--calibration", conv.calibration,
        "--validation", conv.validation, *LAX, storage=store,
    )  # fmt: skip
    assert code == 0, serving
    with np.load(conv.calibration) as good:
        bad = save_npz(tmp_path / "bad.npz", {"input": good["input"] * 1000.0})
    code, rebuilt = run_build(
        "--model", conv.model, "--precision", "int8", "--calibration", bad,
        "--validation", conv.validation, *LAX, "--baseline", serving["path"], storage=store,
    )  # fmt: skip
    assert code == 0, rebuilt
    comparison = rebuilt["comparison"]
    assert comparison["serving"] == {"path": serving["path"], "artifactKey": serving["key"]}
    assert comparison["samples"] == 64
    logits = comparison["outputs"]["logits"]
    assert logits["candidate"]["top1Agreement"] < logits["serving"]["top1Agreement"] - 0.05
    assert logits["serving"]["cosineSimilarity"] > 0.99
    assert [b["batchSize"] for b in comparison["batches"]] == [1, 4]
    assert all(b["candidateP50Ms"] > 0 and b["servingP50Ms"] > 0 for b in comparison["batches"])


def test_a_serving_plan_that_is_gone_is_said_not_raised(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    code, result = run_build(
        "--model", conv.model, "--precision", "fp32", "--baseline", store / "gone", storage=store,
    )  # fmt: skip
    assert code == 0, result
    assert result["comparison"]["serving"] == {"path": str(store / "gone")}
    assert "FileNotFoundError" in result["comparison"]["error"]


def test_a_long_comparison_keeps_the_outputs_that_fell_most_within_4096_bytes() -> None:
    from trtops_worker.builder.result import LIMIT_BYTES, compact

    def sides(candidate: float) -> dict[str, Any]:
        return {
            "candidate": {"top1Agreement": candidate, "cosineSimilarity": 0.99},
            "serving": {"top1Agreement": 0.99, "cosineSimilarity": 0.99},
        }

    outputs = {f"output_{i:02d}": sides(0.99) for i in range(60)}
    outputs["output_17"] = sides(0.5)  # the one that decides the verdict
    result = {
        "ok": True, "key": "k" * 64, "path": "/plans/k", "artifact": "model.plan",
        "comparison": {"batches": [], "outputs": outputs},
    }  # fmt: skip
    text = compact(result)
    assert len(text.encode()) <= LIMIT_BYTES
    kept = json.loads(text)["comparison"]["outputs"]
    assert "output_17" in kept
    assert len(kept) == 3
