"""Generate docs/reference.md, a reference of every TrtEngine field, from the CRD's own schema.

python hack/crd_reference.py          # rewrite docs/reference.md
python hack/crd_reference.py --check  # exit 1 when docs/reference.md is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "trtops.dev_trtengines.yaml"
OUT = REPO / "docs" / "reference.md"


def _type(node: dict[str, Any]) -> str:
    t = str(node.get("type", "object"))
    if t == "array":
        return f"array of {_type(node.get('items', {}))}"
    if "enum" in node:
        return f"{t}: " + " \\| ".join(f"`{v}`" for v in node["enum"])
    return t


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
        ("pattern", "pattern"),
    ):
        if key in node:
            value = f"`{node[key]}`".replace("|", "\\|") if key == "pattern" else str(node[key])
            # exclusiveMinimum (OpenAPI v3.0's boolean form): the bound itself is refused.
            if key == "minimum" and node.get("exclusiveMinimum"):
                label = "above"
            parts.append(f"{label} {value}")
    if "default" in node:
        parts.append(f"default `{json.dumps(node['default'])}`")
    return ", ".join(parts)


def _walk(
    node: dict[str, Any], path: str, required: set[str], rows: list[str], rules: list[str]
) -> None:
    for rule in node.get("x-kubernetes-validations", []):
        # A table cell ends at any unescaped '|', inside a code span too (GFM): CEL's '||'.
        cel, message = (str(rule.get(k, "")).replace("|", "\\|") for k in ("rule", "message"))
        rules.append(f"| `{path or '.'}` | `{cel}` | {message} |")
    props = node.get("properties") or {}
    if node.get("type") == "array" and "items" in node:
        _walk(node["items"], f"{path}[]", set(node["items"].get("required", [])), rows, rules)
    for name, child in props.items():
        child_path = f"{path}.{name}" if path else name
        desc = " ".join(str(child.get("description", "")).split()).replace("|", "\\|")
        req = "yes" if name in required else ""
        rows.append(f"| `{child_path}` | {_type(child)} | {req} | {_bounds(child)} | {desc} |")
        _walk(child, child_path, set(child.get("required", [])), rows, rules)


def render() -> str:
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    out = [
        "# TrtEngine reference",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, kind `{crd['spec']['names']['kind']}` "
        f"(short name `{', '.join(crd['spec']['names'].get('shortNames', []))}`). Generated from "
        "`crds/trtops.dev_trtengines.yaml` by `hack/crd_reference.py`; do not edit by hand.",
        "",
    ]
    for part in ("spec", "status"):
        rows: list[str] = []
        rules: list[str] = []
        node = schema["properties"][part]
        _walk(node, part, set(node.get("required", [])), rows, rules)
        out += [
            f"## {part}",
            "",
            "| field | type | required | bounds and default | description |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
        if rules:
            out += [
                f"### {part}: cross-field rules (checked by the API server)",
                "",
                "| where | rule (CEL) | message |",
                "| --- | --- | --- |",
                *rules,
                "",
            ]
    return "\n".join(out)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python hack/crd_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
