"""The example Application's ignoreDifferences, applied the way Argo CD normalizes a diff
(`del(<jqPathExpression>)`, with jq standing in for Argo CD's gojq): the operator's weights are
ignored, every field Git owns still shows as drift."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.ship.conftest import REPO

APP = yaml.safe_load((REPO / "deploy" / "argocd" / "application.yaml").read_text())

GIT_ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "resnet50", "namespace": "ml"},
    "spec": {
        "parentRefs": [{"name": "inference-gateway"}],
        "hostnames": ["resnet50.ml.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/resnet50"}}],
                "backendRefs": [
                    {"name": "resnet50", "port": 8000, "weight": 100},
                    {"name": "resnet50-canary", "port": 8000, "weight": 0},
                ],
            }
        ],
    },
}


def normalize(obj: dict[str, Any], kind: str) -> Any:
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq not installed (Debian package jq)")
    rule = next(r for r in APP["spec"]["ignoreDifferences"] if r["kind"] == kind)
    for expression in rule["jqPathExpressions"]:
        proc = subprocess.run(
            [jq, "-c", f"del({expression})"],
            input=json.dumps(obj),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        obj = json.loads(proc.stdout)
    return obj


def test_operator_weights_are_not_drift() -> None:
    live = copy.deepcopy(GIT_ROUTE)
    live["spec"]["rules"][0]["backendRefs"][0]["weight"] = 50
    live["spec"]["rules"][0]["backendRefs"][1]["weight"] = 50
    assert live != GIT_ROUTE
    assert normalize(live, "HTTPRoute") == normalize(GIT_ROUTE, "HTTPRoute")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("hostnames",), ["other.example.com"]),
        (("rules", 0, "backendRefs", 0, "name"), "resnet50-old"),
        (("rules", 0, "matches", 0, "path", "value"), "/v2"),
    ],
)
def test_fields_git_owns_still_drift(path: tuple[Any, ...], value: Any) -> None:
    live = copy.deepcopy(GIT_ROUTE)
    node: Any = live["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert normalize(live, "HTTPRoute") != normalize(GIT_ROUTE, "HTTPRoute")


def test_application_keeps_ignored_fields_on_sync() -> None:
    assert "RespectIgnoreDifferences=true" in APP["spec"]["syncPolicy"]["syncOptions"]
