"""End-to-end fixtures: the CRD (shared with the operator tests), quick operator shutdowns, and a
namespace with a ``trt-plans`` claim that the local node agent backs with a host folder holding
the sample model and its calibration and validation data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest

from tests.operator.conftest import trtengine_crd  # noqa: F401 - re-exported fixture
from tests.support.demo import Engines, fill_claim
from tests.support.node_agent_process import NodeAgentHandle


@pytest.fixture(scope="session", autouse=True)
def _short_watches() -> Iterator[None]:
    """kopf closes a watch only when its server timeout ends: keep operator shutdowns quick."""
    old = os.environ.get("TRTOPS_WATCH_TIMEOUT_SECONDS")
    os.environ["TRTOPS_WATCH_TIMEOUT_SECONDS"] = "5"
    yield
    if old is None:
        os.environ.pop("TRTOPS_WATCH_TIMEOUT_SECONDS", None)
    else:
        os.environ["TRTOPS_WATCH_TIMEOUT_SECONDS"] = old


@dataclass
class Workspace:
    engines: Engines
    claim: Path  # the host folder behind the claim trt-plans
    model: onnx.ModelProto


@pytest.fixture
def workspace(k8s_api: Any, namespace: str, node_agent: NodeAgentHandle, trtengine_crd: str) -> Workspace:  # noqa: F811
    claim = node_agent.create_claim(namespace, "trt-plans")
    model = fill_claim(claim)
    return Workspace(Engines(k8s_api, namespace), claim, model)
