"""hack/gpu-smoke.sh: where TensorRT is missing it says so and builds nothing; its steps (build
and gate each precision, serve one plan over OIP v2, compare's table) run end to end on the CPU
backend, so the first GPU run tests TensorRT, not the script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "gpu-smoke.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
        check=False,
    )


def test_without_tensorrt_it_says_so_and_builds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("onnx")  # the worker's dependencies are here; TensorRT is not
    done = _run(tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("gpu-smoke: TensorRT is not usable here, nothing was built.")
    assert "No module named 'tensorrt'" in done.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_every_step_runs_on_the_cpu_backend(tmp_path: Path) -> None:
    done = _run(tmp_path, TRTOPS_SMOKE_BACKEND="onnxruntime", TRTOPS_SMOKE_MODELS="conv")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for precision in ("fp32", "fp16", "int8"):
        row = next(line for line in lines if line.startswith(f"conv         {precision}"))
        assert "passed stages {'artifact': True, 'converted': True}" in row
    assert any("served conv fp16 (onnxruntime) over OIP v2" in line for line in lines)
    assert "| precision | batch | p50 ms |" in done.stdout
    assert "- INT8 is " in done.stdout
    assert lines[-1].startswith("gpu-smoke: all builds passed the gate, the plan served")
