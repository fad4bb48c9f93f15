"""Generated documentation stays in step with what it documents."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import yaml

from tests.support.cluster import REPO


def test_field_reference_matches_the_crd() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "crd_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_field_reference_tables_keep_their_columns() -> None:
    """A GFM table cell ends at any unescaped '|', inside a code span too: a CEL rule's '||'
    once split each rule's row, so the rule showed cut off and its message not at all."""
    cells = re.compile(r"(?<!\\)\|")
    width = 0
    for n, line in enumerate((REPO / "docs" / "reference.md").read_text().splitlines(), 1):
        if not line.startswith("|"):
            width = 0
            continue
        count = len(cells.split(line.strip())) - 2
        if width == 0:
            width = count  # the header row
        assert count == width, f"docs/reference.md:{n}: {count} cells, the header has {width}"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "\nmake test\n" in ci


def _sample_needs() -> tuple[set[str], dict[str, set[str]], set[str]]:
    """What samples/*.yaml (the README's samples) need a cluster to opt in to: the claims they
    mount, the routes they weigh (``kind/name`` -> engines) and the Prometheus they query."""
    claims: set[str] = set()
    routes: dict[str, set[str]] = {}
    proms: set[str] = set()

    def uris(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for v in node.values():
                yield from uris(v)
        elif isinstance(node, list):
            for v in node:
                yield from uris(v)
        elif isinstance(node, str) and node.startswith("pvc://"):
            yield node

    for path in sorted((REPO / "samples").glob("*.yaml")):
        engine = yaml.safe_load(path.read_text())
        spec = engine["spec"]
        claims.add(spec["storage"]["claimName"])
        claims.update(uri.removeprefix("pvc://").split("/")[0] for uri in uris(spec))
        rollout = spec.get("rollout") or {}
        router = rollout.get("trafficRouter") or {}
        for kind, key, field in (
            ("httproute", "gatewayAPI", "httpRoute"),
            ("virtualservice", "istio", "virtualService"),
        ):
            if key in router:
                routes.setdefault(f"{kind}/{router[key][field]}", set()).add(
                    engine["metadata"]["name"]
                )
        address = ((rollout.get("analysis") or {}).get("prometheus") or {}).get("address")
        if address:
            proms.add(address)
    return claims, routes, proms


def test_readme_install_opts_in_what_the_samples_need() -> None:
    """The README's "real cluster" commands label every claim the samples mount, annotate every
    route they weigh with the engine, and allow-list every Prometheus they query: before, it
    labelled only trt-plans while samples/resnet-int8.yaml reads its model, calibration and
    validation data from the claim `models` (ClaimNotAllowed, nothing built)."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Using it on a real cluster") :]
    claims, routes, proms = _sample_needs()
    labelled = {
        name
        for names in re.findall(
            r"kubectl label pvc -n \S+ ((?:[\w.-]+ )+)trtops\.dev/mountable=true", block
        )
        for name in names.split()
    }
    assert claims <= labelled, (
        f"claims the samples mount but README does not label: {claims - labelled}"
    )
    annotated = {
        f"{kind}/{name}": set(engines.split(","))
        for kind, name, engines in re.findall(
            r"kubectl annotate (httproute|virtualservice) -n \S+ (\S+) trtops\.dev/engine=(\S+)",
            block,
        )
    }
    for route, engines in routes.items():
        assert engines <= annotated.get(route, set()), f"{route} is not annotated for {engines}"
    (listed,) = re.findall(r"--set prometheus\.addresses='\{([^}]*)\}'", block)
    assert proms <= set(listed.split(",")), (
        f"Prometheus not allow-listed: {proms - set(listed.split(','))}"
    )
