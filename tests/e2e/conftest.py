"""End-to-end fixtures: the CRD (shared with the operator tests), quick operator shutdowns, and a
namespace with a ``trt-plans`` claim that the local node agent backs with a host folder holding
the sample model and its calibration and validation data."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
from kopf.testing import KopfRunner

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
    node: str  # the local node agent's Node: the engine's pods are pinned to it


@pytest.fixture
def workspace(
    k8s_api: Any, namespace: str, node_agent: NodeAgentHandle, trtengine_crd: str
) -> Workspace:
    claim = node_agent.create_claim(namespace, "trt-plans")
    model = fill_claim(claim)
    return Workspace(Engines(k8s_api, namespace), claim, model, node_agent.node)


@pytest.fixture
def operator(kubeconfig: Path) -> Callable[[str], contextlib.AbstractContextManager[KopfRunner]]:
    """``with operator(namespace):`` runs the operator in-process (KopfRunner) on one namespace.

    Unlike ``tests/support/kopf_runner.run_operator``, the operator's log is read only after the
    runner has stopped it: ``KopfRunner.output`` waits for the operator to finish, so reading it
    inside the block turns any test failure into a hang.
    """

    @contextlib.contextmanager
    def run(namespace: str) -> Iterator[KopfRunner]:
        args = [
            "run",
            "--standalone",
            "--verbose",
            "-m",
            "trtops_operator.handlers",
            f"--namespace={namespace}",
        ]
        runner = KopfRunner(args, timeout=60)
        try:
            with runner:
                yield runner
        except BaseException as exc:
            exc.add_note(f"operator log (tail):\n{runner.output[-6000:]}")
            raise
        assert runner.exception is None, (
            f"operator crashed: {runner.exception!r}\n{runner.output[-4000:]}"
        )
        assert runner.exit_code == 0, runner.output[-4000:]

    return run
