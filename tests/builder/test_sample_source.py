"""Builds that calibrate and validate with the request sample (``source: sample``): real INT8
calibration on ONNX Runtime with sample files written by the serving sampler's own writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from trtops_worker import samples
from trtops_worker.contract import EXIT_CODES
from trtops_worker.serve.sampling import write_atomically

from tests.builder.conftest import RunBuild, SampleModel


def _sample(root: Path, revision: str, writer: str, arrays: dict[str, np.ndarray]) -> None:
    write_atomically(root / revision / f"{writer}.npz", arrays)


def _traffic(rows: int, seed: int) -> dict[str, np.ndarray]:
    return samples.calibration_inputs(samples.conv_classifier(), rows, seed=seed)


def _int8(conv: SampleModel, *extra: str | Path) -> list[str | Path]:
    # 64 rows of another seed than the fixture's calibration set: top-1 agreement ~0.94-1.0.
    gate = ("--min-top1-agreement", "0.9", "--min-cosine-similarity", "0.98")
    return [
        "--model",
        conv.model,
        "--precision",
        "int8",
        "--validation",
        conv.validation,
        *gate,
        *extra,
    ]


def test_int8_calibrates_with_the_request_sample_once_it_is_large_enough(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    root = store / "samples" / "conv"
    _sample(root, "r1", "conv-cpu-a", _traffic(24, seed=3))
    _sample(root, "r1", "conv-cpu-b", _traffic(24, seed=4))
    _sample(root, "r0", "conv-cpu-a", _traffic(16, seed=5))  # an older revision's pod
    args = _int8(conv, "--calibration", conv.calibration, "--calibration-sample", root)

    code, from_sample = run_build(*args, "--calibration-min-sample-rows", "64", storage=store)
    assert (code, from_sample["ok"]) == (0, True), from_sample
    assert from_sample["dataSources"]["calibration"] == (
        "request sample: 64 of 64 rows from 3 file(s)"
    )
    assert from_sample["accuracy"]["passed"] is True  # real calibration, real gate

    code, from_file = run_build(*args, "--calibration-min-sample-rows", "65", storage=store)
    assert code == 0, from_file
    assert from_file["dataSources"]["calibration"] == (
        "file conv.calibration.npz (request sample: 64 of 64 rows from 3 file(s), fewer than 65)"
    )
    assert from_file["key"] != from_sample["key"]  # other calibration data, another plan

    code, again = run_build(*args, "--calibration-min-sample-rows", "64", storage=store)
    assert (code, again["key"], again["cached"]) == (0, from_sample["key"], True)

    _sample(root, "r1", "conv-cpu-c", _traffic(8, seed=6))  # more traffic: a new sample
    code, fresh = run_build(*args, "--calibration-min-sample-rows", "64", storage=store)
    assert code == 0, fresh
    assert fresh["key"] not in (from_sample["key"], from_file["key"])
    assert fresh["dataSources"]["calibration"] == "request sample: 72 of 72 rows from 4 file(s)"


def test_files_that_do_not_fit_the_model_are_left_out(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    root = store / "samples" / "conv"
    _sample(root, "r1", "pod", _traffic(40, seed=3))
    _sample(root, "old", "pod", {"input": np.ones((5, 3, 16, 16), np.float32)})  # older model
    _sample(root, "r1", "other", {"tokens": np.ones((5, 8), np.int64)})
    code, result = run_build(
        *_int8(conv, "--calibration-sample", root, "--calibration-min-sample-rows", "10"),
        storage=store,
    )
    assert code == 0, result
    assert result["dataSources"]["calibration"] == (
        "request sample: 40 of 40 rows from 1 file(s), 2 file(s) left out"
    )


def test_a_small_sample_without_a_file_fails_saying_so(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    root = store / "samples" / "conv"
    _sample(root, "r1", "pod", _traffic(5, seed=3))
    code, result = run_build(*_int8(conv, "--calibration-sample", root), storage=store)
    assert (code, result["category"], result["reason"]) == (
        EXIT_CODES["calibration"],
        "calibration",
        "CalibrationSampleTooSmall",
    )
    assert "5 of 5 rows" in result["message"]
    assert "fewer than 64" in result["message"]


def test_the_gate_validates_on_the_request_sample(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    root = store / "samples" / "conv"
    _sample(root, "r1", "pod", _traffic(32, seed=9))
    code, result = run_build(
        "--model",
        conv.model,
        "--precision",
        "fp16",
        "--validation-sample",
        root,
        "--validation-min-sample-rows",
        "32",
        storage=store,
    )
    assert code == 0, result
    assert result["dataSources"] == {"validation": "request sample: 32 of 32 rows from 1 file(s)"}
    assert result["accuracy"]["samples"] == 32
    assert result["accuracy"]["passed"] is True
