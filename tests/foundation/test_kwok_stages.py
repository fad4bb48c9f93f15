"""hack/kwok/pod-complete.yaml is kwok's own pod-complete stage (of the pinned kwok) with one more
selector expression, leaving trtops build pods to the tests: a kwok upgrade that changes the
stage shows here instead of as a cluster whose Job pods behave differently."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO

OURS = REPO / "hack" / "kwok" / "pod-complete.yaml"
LEAVES_BUILDS = {
    "key": '.metadata.labels["trtops.dev/component"]',
    "operator": "NotIn",
    "values": ["build"],
}


def _kwok_module() -> Path:
    versions = (REPO / "tools" / "controlplane" / "versions.env").read_text().splitlines()
    version = next(v.split("=", 1)[1] for v in versions if v.startswith("KWOK_VERSION="))
    try:
        cache = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no Go toolchain (hack/setup.sh installs it)")
    module = Path(cache) / "sigs.k8s.io" / f"kwok@{version}"
    if not module.is_dir():
        pytest.skip(f"{module} not downloaded yet (hack/build-controlplane.sh fetches it)")
    return module


def test_our_pod_complete_is_kwoks_plus_the_build_pod_exception() -> None:
    upstream_file = _kwok_module() / "kustomize" / "stage" / "pod" / "fast" / "pod-complete.yaml"
    upstream: dict[str, Any] = yaml.safe_load(upstream_file.read_text())
    ours: dict[str, Any] = yaml.safe_load(OURS.read_text())
    expressions = ours["spec"]["selector"]["matchExpressions"]
    assert LEAVES_BUILDS in expressions
    expressions.remove(LEAVES_BUILDS)
    assert ours == upstream
