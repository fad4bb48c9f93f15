"""deploy/argocd/health.lua run by real Lua interpreters, the way Argo CD runs it, against
TrtEngine status samples; and the argocd-cm snippet carries the same script.

Argo CD runs the script in gopher-lua, a Lua 5.1 VM, so every run is made with Debian's lua5.1
as well as lua5.4. The harness gives the script only what Argo CD gives an argocd-cm script (base,
table, and os.time/os.date: no string or math library)."""

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
# gopher-lua (what Argo CD runs) implements Lua 5.1; 5.4 is what people have on their desks.
INTERPRETERS = ["lua5.1", "lua5.4"]
CM_KEY = "resource.customizations.health.trtops.dev_TrtEngine"


@pytest.fixture(params=INTERPRETERS)
def lua(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return tool(name, f"apt-get install {name} (hack/setup.sh does)")


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


def run_health(
    lua: str,
    obj: dict[str, Any],
    tmp_path: Path,
    script: Path = HEALTH,
) -> subprocess.CompletedProcess[str]:
    objfile = tmp_path / "obj.lua"
    objfile.write_text("return " + to_lua(obj) + "\n")
    return subprocess.run(
        [lua, str(SAMPLES_DIR / "harness.lua"), str(script), str(objfile)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def health(lua: str, obj: dict[str, Any], tmp_path: Path, script: Path = HEALTH) -> tuple[str, str]:
    proc = run_health(lua, obj, tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    status, message = proc.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def test_samples_cover_every_health_status() -> None:
    assert len(SAMPLES) >= 8
    assert {s["expect"]["status"] for s in SAMPLES} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["name"] for s in SAMPLES])
def test_health_of_status_sample(lua: str, sample: dict[str, Any], tmp_path: Path) -> None:
    status, message = health(lua, sample["obj"], tmp_path)
    assert status == sample["expect"]["status"], message
    assert sample["expect"]["message"] in message


# Each runs in a stock lua5.4 but needs more than Argo CD gives an argocd-cm script.
NOT_IN_ARGOCD = {
    "string-library": 'return {status = string.format("%s", "Healthy")}',
    "string-method": 'return {status = ("healthy"):upper()}',
    "math-library": 'return {status = "Healthy", message = tostring(math.floor(1.5))}',
    "table-unpack": 'return {status = table.unpack({"Healthy"})}',
}


@pytest.mark.parametrize("body", NOT_IN_ARGOCD.values(), ids=list(NOT_IN_ARGOCD))
def test_harness_rejects_what_argocd_does_not_provide(lua: str, body: str, tmp_path: Path) -> None:
    """Guards the harness itself: a script leaning on a library Argo CD leaves closed fails here."""
    script = tmp_path / "uses.lua"
    script.write_text(body + "\n")
    proc = run_health(lua, {}, tmp_path, script)
    assert proc.returncode != 0
    assert "nil value" in proc.stderr or "string value" in proc.stderr, proc.stderr


@pytest.mark.parametrize("body", ["local x = 7 // 2", "local x = 6 & 3", "goto done ::done::"])
def test_lua51_rejects_lua52_syntax(body: str, tmp_path: Path) -> None:
    """The lua5.1 run is what catches Lua 5.2+ syntax: the same text loads under lua5.4."""
    script = tmp_path / "newer.lua"
    script.write_text(body + '\nreturn {status = "Healthy", message = ""}\n')
    lua51 = tool("lua5.1", "apt-get install lua5.1 (hack/setup.sh does)")
    lua54 = tool("lua5.4", "apt-get install lua5.4 (hack/setup.sh does)")
    assert run_health(lua51, {}, tmp_path, script).returncode != 0
    assert health(lua54, {}, tmp_path, script)[0] == "Healthy"


def argocd_cm_data() -> dict[str, str]:
    cm = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    data: dict[str, str] = cm["data"]
    return data


def test_argocd_cm_snippet_embeds_the_script_verbatim() -> None:
    assert argocd_cm_data()[CM_KEY] == HEALTH.read_text()


def test_snippet_needs_no_open_libs() -> None:
    """The script runs in Argo CD's default sandbox, so the snippet must not ask for the full
    standard library (resource.customizations.useOpenLibs.<group_kind>)."""
    assert not [k for k in argocd_cm_data() if k.startswith("resource.customizations.useOpenLibs")]


def test_snippet_script_runs(lua: str, tmp_path: Path) -> None:
    """What Argo CD executes is the snippet's text: run that, not only the file."""
    script = tmp_path / "from-cm.lua"
    script.write_text(argocd_cm_data()[CM_KEY])
    rolled_back = next(s for s in SAMPLES if s["name"] == "rolled-back")
    assert health(lua, rolled_back["obj"], tmp_path, script)[0] == "Degraded"
