"""Helpers for the adoption tests: the chart rendered by the project's Helm, and tools found on
PATH (Helm and kubectl come from the local control-plane cache, exported by tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

# The bound `trt-plans` claim the cluster RBAC test's build and serving pods mount.
from tests.operator.conftest import plans_claim  # noqa: F401 - re-exported as a fixture

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trtops"
KUBE_VERSION = "1.35.4"


def tool(name: str, hint: str) -> str:
    """Path of a required tool; a missing one fails the test with how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {hint}")
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [tool("helm", "run hack/setup.sh (builds Helm from Go modules)"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template_args(namespace: str = "trtops-system", **sets: str) -> list[str]:
    args = ["template", "t", str(CHART), "--kube-version", KUBE_VERSION, "-n", namespace]
    for key, value in sets.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    return args


def render(namespace: str = "trtops-system", **sets: str) -> list[dict[str, Any]]:
    """`helm template` the chart; keyword ``a__b="x"`` is ``--set a.b=x``."""
    out = helm(*template_args(namespace, **sets)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
