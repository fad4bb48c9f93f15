"""The GitHub release workflow, checked without GitHub: actionlint (built from its Go module by
hack/build-controlplane.sh) passes on it and catches a broken copy, and the workflow does what a
release promises: both architectures, every image target, SBOM, signatures, the chart as an OCI
artifact, and the TensorRT pin read from images/versions.env."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.ship.conftest import REPO, tool
from tests.ship.test_dockerfile import stages

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("actionlint", "hack/build-controlplane.sh actionlint"), "-no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def test_actionlint_passes() -> None:
    proc = actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        WORKFLOW.read_text().replace("steps.build.outputs.digest", "steps.bild.outputs.digest")
    )
    proc = actionlint(broken)
    assert proc.returncode != 0
    assert "bild" in proc.stdout


def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def test_every_image_target_is_built_for_both_architectures_with_sbom_and_signature() -> None:
    images = workflow()["jobs"]["images"]
    matrix = images["strategy"]["matrix"]["include"]
    targets = {m["target"] for m in matrix}
    assert targets == set(stages()) - {"wheel"}  # every image stage of the Dockerfile
    assert all(m["platforms"] == "linux/amd64,linux/arm64" for m in matrix)
    build = next(s for s in images["steps"] if s.get("id") == "build")["with"]
    assert build["sbom"] is True
    assert build["push"] is True
    steps = " ".join(str(s.get("run", "")) for s in images["steps"])
    assert "cosign sign --yes" in steps
    # The cache key and the build read the TensorRT pin from its one place.
    assert "hashFiles('images/versions.env'" in build["cache-from"]
    assert "TENSORRT_VERSION=${{ env.TENSORRT_VERSION }}" in build["build-args"]
    assert "images/versions.env" in steps


def test_chart_is_pushed_as_a_signed_oci_artifact() -> None:
    run = " ".join(str(s.get("run", "")) for s in workflow()["jobs"]["chart"]["steps"])
    assert re.search(r'helm push \S+ "oci://', run)
    assert "cosign sign --yes" in run


def test_tensorrt_is_pinned_in_one_place() -> None:
    pins = dict(
        line.split("=", 1)
        for line in (REPO / "images" / "versions.env").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    )
    assert re.fullmatch(r"11\.\d+\.\d+\.\d+", pins["TENSORRT_VERSION"])
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", pins["TENSORRT_IMAGE"])
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG TENSORRT_IMAGE\n" in dockerfile  # no default to drift from the pin
    assert "ARG TENSORRT_VERSION\n" in dockerfile
    assert pins["TENSORRT_VERSION"] not in dockerfile
