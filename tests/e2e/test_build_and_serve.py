"""The whole path with nothing faked: the operator (in-process) creates a build Job, the local node
agent runs ``trtops-worker build`` for it (INT8 post-training quantization, accuracy gate), the
operator reads the worker's result into status and serves the plan, the agent runs ``trtops-worker
serve`` pods, a client reaches them through the engine's Service, and a real Prometheus scrapes
them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from trtops_worker.builder.model import sha256_file

from tests.e2e.conftest import Workspace
from tests.support.cluster import wait_for
from tests.support.demo import infer, load_sample
from tests.support.gateway import start_gateway, stats

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def _run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], inputs)[0])


def _wait_built(workspace: Workspace) -> dict[str, Any]:
    """The Built condition once the build has an outcome (``Building`` means in progress)."""

    def finished() -> dict[str, Any] | None:
        cond = workspace.engines.condition("conv", "Built")
        return (
            cond
            if cond.get("status") == "True" or cond.get("reason") not in (None, "Building")
            else None
        )

    return wait_for(finished, timeout=120, what="the build to finish")


def test_int8_engine_builds_serves_and_is_scraped(
    workspace: Workspace,
    operator: Callable[[str], AbstractContextManager[Any]],
    prometheus: Callable[..., Any],
    tmp_path: Path,
) -> None:
    engines, ns = workspace.engines, workspace.engines.ns
    prom = prometheus({}, discover_pods=True)
    with operator(ns):
        engines.create(load_sample("conv-int8.yaml", node=workspace.node))
        built = _wait_built(workspace)
        assert built["status"] == "True", built

        # The plan in status is the artifact the worker really wrote to the claim.
        status = engines.get("conv")["status"]
        (plan,) = status["plans"]
        assert plan["precision"] == "int8"
        assert plan["backend"] == "onnxruntime"
        artifact = workspace.claim / Path(plan["path"]).name / plan["artifact"]
        assert sha256_file(artifact) == plan["sha256"]
        gate = plan["accuracy"]
        assert gate["passed"] is True
        assert gate["outputs"]["logits"]["top1Agreement"] >= 0.9

        wait_for(
            lambda: engines.condition("conv", "Ready").get("status") == "True",
            timeout=90,
            what="the engine to be Ready",
        )
        status = engines.get("conv")["status"]
        assert status["stable"]["revision"] == status["revision"]
        pods = engines.ready_serving_pods("conv")
        assert len(pods) == 2

        # Through the engine's Service, as a client in the cluster would call it.
        x = {"input": np.load(workspace.claim / "data" / "val.npz")["input"][:4]}
        with start_gateway(service=f"{ns}/conv", log_dir=tmp_path) as url:
            wait_for(
                lambda: len(stats(url)["backends"][0][2]) == 2,
                timeout=30,
                what="the gateway to see both ready pods behind the Service",
            )
            answers = [infer(url, "conv", x)["logits"] for _ in range(20)]
        served = answers[0]
        assert served.shape == (4, 10)
        for other in answers[1:]:
            np.testing.assert_allclose(other, served, rtol=1e-5, atol=1e-5)
        # What is served is the built INT8 artifact, not the FP32 model it came from.
        np.testing.assert_allclose(served, _run_onnx(artifact, x), rtol=1e-5, atol=1e-5)
        fp32 = _run_onnx(workspace.claim / "models" / "conv.onnx", x)
        assert not np.allclose(served, fp32, rtol=1e-5, atol=1e-5)

        # Prometheus found every serving pod through its annotations and scraped its metrics.
        revision = status["revision"]

        def scraped() -> list[dict[str, Any]] | None:
            rows = prom.query(
                f"sum by (pod, revision, precision, backend) "
                f'(trtops_requests_total{{namespace="{ns}", outcome="success"}})'
            )
            total = sum(float(r["value"][1]) for r in rows)
            return rows if len(rows) == 2 and total >= 20 else None

        rows = wait_for(scraped, timeout=60, what="Prometheus to scrape both serving pods")
        assert {r["metric"]["pod"] for r in rows} == {p.metadata.name for p in pods}
        assert {
            (r["metric"]["revision"], r["metric"]["precision"], r["metric"]["backend"])
            for r in rows
        } == {(revision, "int8", "onnxruntime")}


def test_bad_calibration_fails_the_accuracy_gate_and_nothing_serves(
    workspace: Workspace,
    operator: Callable[[str], AbstractContextManager[Any]],
) -> None:
    engines = workspace.engines
    body = load_sample("conv-int8.yaml", node=workspace.node)
    body["spec"]["build"]["calibration"]["uri"] = "data/zeros.npz"  # all zeros: useless scales
    body["spec"]["build"]["backoffLimit"] = 0  # a failed gate is permanent: no second attempt
    with operator(engines.ns):
        engines.create(body)
        built = _wait_built(workspace)
        assert built["status"] == "False"
        assert built["reason"] == "AccuracyGateFailed"
        assert "top-1 agreement" in built["message"]
        assert engines.condition("conv", "Degraded").get("status") == "True"
        assert engines.condition("conv", "Ready").get("status") != "True"
        assert engines.get("conv")["status"].get("plans", []) == []
        assert engines.deployments("conv") == []
        assert engines.serving_pods("conv") == []
