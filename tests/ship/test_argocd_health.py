"""deploy/argocd/health.lua run by a real Lua interpreter, the way Argo CD runs it, against
TrtEngine status samples; and the argocd-cm snippet carries the same script."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ship.conftest import REPO, tool

HEALTH = REPO / "deploy" / "argocd" / "health.lua"
SAMPLES_DIR = Path(__file__).parent / "health_samples"
SAMPLES: list[dict[str, Any]] = yaml.safe_load((SAMPLES_DIR / "samples.yaml").read_text())


def to_lua(value: Any) -> str:
    """A Python value from YAML as a Lua literal (the shape Argo CD builds from the JSON object)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{to_lua(str(k))}] = {to_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def health(obj: dict[str, Any], tmp_path: Path, script: Path = HEALTH) -> tuple[str, str]:
    objfile = tmp_path / "obj.lua"
    objfile.write_text("return " + to_lua(obj) + "\n")
    lua = tool("lua5.4", "apt-get install lua5.4 (hack/setup.sh does)")
    proc = subprocess.run(
        [lua, str(SAMPLES_DIR / "harness.lua"), str(script), str(objfile)],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    status, message = proc.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def test_samples_cover_every_health_status() -> None:
    assert len(SAMPLES) >= 8
    assert {s["expect"]["status"] for s in SAMPLES} == {
        "Healthy", "Progressing", "Degraded", "Suspended",
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["name"] for s in SAMPLES])
def test_health_of_status_sample(sample: dict[str, Any], tmp_path: Path) -> None:
    status, message = health(sample["obj"], tmp_path)
    assert status == sample["expect"]["status"], message
    assert sample["expect"]["message"] in message


def test_argocd_cm_snippet_embeds_the_script_verbatim() -> None:
    cm = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    embedded = cm["data"]["resource.customizations.health.trtops.dev_TrtEngine"]
    assert embedded == HEALTH.read_text()


def test_snippet_script_runs(tmp_path: Path) -> None:
    """What Argo CD executes is the snippet's text: run that, not only the file."""
    cm = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    script = tmp_path / "from-cm.lua"
    script.write_text(cm["data"]["resource.customizations.health.trtops.dev_TrtEngine"])
    rolled_back = next(s for s in SAMPLES if s["name"] == "rolled-back")
    assert health(rolled_back["obj"], tmp_path, script)[0] == "Degraded"
