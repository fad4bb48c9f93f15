"""Every bad input fails fast with its own reason and its category's exit code, and the
termination message is a compact JSON the operator can read (never a traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from trtops_worker.builder.model import sha256_file

from tests.builder.conftest import RunBuild, SampleModel, int8_build_argv, save_npz


def _expect(result: tuple[int, dict[str, object]], code: int, category: str, reason: str) -> str:
    exit_code, body = result
    assert (exit_code, body["ok"], body["category"], body["reason"]) == (
        code,
        False,
        category,
        reason,
    ), body
    assert set(body) == {"ok", "category", "reason", "message"}
    message = str(body["message"])
    assert message
    assert "Traceback" not in message
    return message


def test_not_an_onnx_file(run_build: RunBuild, tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("this is a README, not a model\n" * 20)
    _expect(run_build("--model", bogus, "--precision", "fp32"), 10, "model", "InvalidModel")


def test_truncated_model(run_build: RunBuild, conv: SampleModel, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(conv.model.read_bytes()[: conv.model.stat().st_size // 2])
    _expect(run_build("--model", truncated, "--precision", "fp32"), 10, "model", "InvalidModel")


def test_sha256_pin_mismatch(run_build: RunBuild, conv: SampleModel) -> None:
    message = _expect(
        run_build("--model", conv.model, "--precision", "fp32", "--model-sha256", "0" * 64),
        10,
        "model",
        "ModelDigestMismatch",
    )
    assert sha256_file(conv.model) in message


def test_sha256_pin_match_builds(run_build: RunBuild, conv: SampleModel) -> None:
    code, result = run_build(
        "--model", conv.model, "--precision", "fp32", "--model-sha256", sha256_file(conv.model)
    )
    assert code == 0
    assert result["ok"] is True


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_precision_without_calibration(
    run_build: RunBuild, conv: SampleModel, precision: str
) -> None:
    _expect(
        run_build("--model", conv.model, "--precision", precision),
        11,
        "calibration",
        "CalibrationRequired",
    )


@pytest.mark.parametrize(
    ("arrays", "hint"),
    [
        ({"images": np.zeros((4, 3, 32, 32), np.float32)}, "missing ['input']"),
        (
            {"input": np.zeros((4, 3, 32, 32), np.float32), "extra": np.zeros(4)},
            "unexpected ['extra']",
        ),
        ({"input": np.zeros((4, 3, 16, 16), np.float32)}, "has shape [4, 3, 16, 16]"),
        ({"input": np.zeros((4, 3, 32), np.float32)}, "has shape [4, 3, 32]"),
        ({"input": np.full((4, 3, 32, 32), "a")}, "expects FP32"),
    ],
    ids=["wrong-name", "extra-array", "wrong-shape", "wrong-rank", "wrong-dtype"],
)
def test_calibration_that_does_not_match_the_inputs(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path, arrays: dict[str, np.ndarray], hint: str
) -> None:
    path = tmp_path / "calibration.npz"
    save_npz(path, arrays)
    message = _expect(
        run_build("--model", conv.model, "--precision", "int8", "--calibration", path),
        11,
        "calibration",
        "CalibrationMismatch",
    )
    assert hint in message


def test_npy_calibration_for_a_single_input_model(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    path = tmp_path / "calibration.npy"
    with np.load(conv.calibration) as npz:
        np.save(path, npz["input"])
    code, result = run_build(
        "--model",
        conv.model,
        "--precision",
        "int8",
        "--calibration",
        path,
        "--calibration-method",
        "max",
        "--validation",
        conv.validation,
    )
    assert code == 0, result


def test_percentile_is_refused_rather_than_silently_replaced(
    run_build: RunBuild, conv: SampleModel
) -> None:
    _expect(
        run_build(
            "--model",
            conv.model,
            "--precision",
            "int8",
            "--calibration",
            conv.calibration,
            "--calibration-method",
            "percentile",
        ),
        11,
        "calibration",
        "CalibrationMethodUnsupported",
    )


@pytest.mark.parametrize(
    ("profile", "hint"),
    [
        ("input:8x3x32x32:4x3x32x32:16x3x32x32", "min [8, 3, 32, 32] exceeds opt"),
        ("input:1x3x32x32:16x3x32x32:8x3x32x32", "opt [16, 3, 32, 32] exceeds max"),
        ("input:1x3x64x64:4x3x64x64:8x3x64x64", "dimension 2 is fixed at 32"),
        ("pixels:1x3x32x32:4x3x32x32:8x3x32x32", "no such input"),
        ("input:1x3x32x32:8x3x32x32", "must be NAME:MIN:OPT:MAX"),
    ],
    ids=["min-gt-opt", "opt-gt-max", "static-dim", "unknown-input", "malformed"],
)
def test_invalid_profile(run_build: RunBuild, conv: SampleModel, profile: str, hint: str) -> None:
    message = _expect(
        run_build("--model", conv.model, "--precision", "fp32", "--profile", profile),
        12,
        "config",
        "InvalidProfile",
    )
    assert hint in message


def test_unwritable_storage(run_build: RunBuild, conv: SampleModel, tmp_path: Path) -> None:
    # Tests may run as root, which ignores permission bits: a path below a regular file is
    # unwritable for everyone.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    _expect(
        run_build("--model", conv.model, "--precision", "fp32", storage=blocker / "store"),
        13,
        "storage",
        "StorageUnwritable",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_storage(run_build: RunBuild, conv: SampleModel, tmp_path: Path) -> None:
    storage = tmp_path / "ro"
    storage.mkdir(mode=0o555)
    _expect(
        run_build("--model", conv.model, "--precision", "fp32", storage=storage),
        13,
        "storage",
        "StorageUnwritable",
    )


def test_tensorrt_backend_without_tensorrt(run_build: RunBuild, conv: SampleModel) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the unavailable path cannot be shown")
    message = _expect(
        run_build("--model", conv.model, "--precision", "fp32", "--backend", "tensorrt"),
        15,
        "backend",
        "BackendUnavailable",
    )
    assert "tensorrt" in message.lower()


def test_a_build_killed_midway_leaves_nothing_at_the_final_path(
    conv: SampleModel, tmp_path: Path
) -> None:
    storage = tmp_path / "store"
    argv = int8_build_argv(
        conv,
        storage,
        tmp_path / "log",
        "--validation",
        str(conv.validation),
        "--benchmark-iterations",
        "5",
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (storage.is_dir() and any(p.name.startswith(".tmp-") for p in storage.iterdir())):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.005)
        proc.send_signal(
            signal.SIGKILL
        )  # mid-way: the temp folder exists, ModelOpt is still loading
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    entries = [p.name for p in storage.iterdir()]
    assert [e for e in entries if not e.startswith(".")] == []  # no entry at any final path
    assert any(e.startswith(".tmp-") for e in entries)  # only the dead build's temp folder

    # The next run cleans the stale folder up and publishes a complete entry.
    code = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    ).returncode
    assert code == 0
    entries = [p.name for p in storage.iterdir()]
    assert not [e for e in entries if e.startswith(".tmp-")]
    (key,) = [e for e in entries if not e.startswith(".")]
    assert (storage / key / "metadata.json").is_file()
