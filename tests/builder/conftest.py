"""Fixtures for the build tests: the sample models on disk, their calibration and validation
sets, and ``run_build`` which runs the real ``trtops-worker build`` in-process and returns the
exit code with the termination-log JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trtops_worker import samples
from trtops_worker.cli import main

# Small on purpose: enough samples for a meaningful gate, few enough to keep the suite fast.
CALIBRATION_SAMPLES = 64
VALIDATION_SAMPLES = 64


@dataclass(frozen=True)
class SampleModel:
    name: str
    model: Path
    calibration: Path
    validation: Path


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` keyed by input name (typed loosely: numpy's stub mistakes a key for a flag)."""
    kwargs: dict[str, Any] = dict(arrays)
    np.savez(path, **kwargs)
    return path


def _write(folder: Path, name: str, proto: Any) -> SampleModel:
    model = samples.save(proto, folder / f"{name}.onnx")
    calibration = folder / f"{name}.calibration.npz"
    validation = folder / f"{name}.validation.npz"
    save_npz(calibration, samples.calibration_inputs(proto, CALIBRATION_SAMPLES, seed=1))
    save_npz(validation, samples.calibration_inputs(proto, VALIDATION_SAMPLES, seed=7))
    return SampleModel(name, model, calibration, validation)


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SampleModel]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "conv": _write(folder, "conv", samples.conv_classifier()),
        "transformer": _write(folder, "transformer", samples.transformer_classifier()),
    }


@pytest.fixture
def conv(sample_models: dict[str, SampleModel]) -> SampleModel:
    return sample_models["conv"]


RunBuild = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture
def run_build(tmp_path: Path) -> RunBuild:
    """``run_build("--model", ..., storage=PATH)`` -> (exit code, result JSON)."""

    def run(*args: str | Path, storage: Path | None = None) -> tuple[int, dict[str, Any]]:
        log = tmp_path / "termination-log"
        log.unlink(missing_ok=True)
        argv = [
            "build",
            *map(str, args),
            "--storage",
            str(storage or tmp_path / "store"),
            "--termination-log",
            str(log),
            "--benchmark-batch-sizes",
            "1,4",
            "--benchmark-iterations",
            "5",
            "--benchmark-seconds",
            "0.5",
        ]
        code = main(argv)
        text = log.read_text()
        assert len(text.encode()) <= 4096
        return code, json.loads(text)

    return run


def int8_build_argv(conv: SampleModel, storage: Path, log: Path, *extra: str) -> list[str]:
    """``python -m trtops_worker build`` of ``conv`` at int8 (max calibration), as a subprocess's
    argv: seconds of work inside the temporary folder, for tests that stop or kill it midway.
    ``extra`` adds flags (a validation set, a benchmark length)."""
    return [
        sys.executable,
        "-m",
        "trtops_worker",
        "build",
        "--model",
        str(conv.model),
        "--precision",
        "int8",
        "--calibration",
        str(conv.calibration),
        "--calibration-method",
        "max",
        "--storage",
        str(storage),
        "--termination-log",
        str(log),
        *extra,
    ]
