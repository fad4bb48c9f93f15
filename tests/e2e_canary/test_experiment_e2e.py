"""A precision experiment end to end, with nothing faked: the local control plane, the local node
agent running the real build Jobs and serving pods, a real Prometheus scraping them, the
operator (KopfRunner), and traffic through a gateway that follows the HTTPRoute weights.

The transformer sample (``trtops_worker.samples.transformer_classifier``) is served at FP32; its
``spec.experiment`` asks for FP16 and INT8 variants at 30 % each, until every arm answered
``minRequests``. The operator builds both variants (one Job each, none for the baseline), serves
them beside the baseline, sets the route to 40/30/30, measures the arms in Prometheus, and ends
with results and a recommendation in ``status.experiment``. The report command then writes
Markdown and a PNG, which is checked as an image.

On this shared 2-core machine no variant is reliably faster than FP32 on ONNX Runtime (INT8 is
often slower), so the test asserts that a recommendation was made by the rule and explained,
not which precision won.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from trtops_worker import samples

from tests.e2e_canary.test_canary_e2e import NAME, operator_env, rollout_stack
from tests.support import stack
from tests.support.cluster import wait_for
from tests.support.node_agent_process import NodeAgentHandle

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]
__all__ = ["operator_env", "rollout_stack"]  # the fixtures this module uses

PRICES = {"gpuHourPrice": 2.5, "cpuHourPrice": 0.04, "currency": "USD"}
# Longer runs for a report to hand on: TRTOPS_EXPERIMENT_MIN_REQUESTS=5000.
MIN_REQUESTS = int(os.environ.get("TRTOPS_EXPERIMENT_MIN_REQUESTS", "150"))


def fill_transformer(claim: Path) -> None:
    """The transformer sample and its data on the claim, as a user would upload them."""
    model = samples.transformer_classifier()
    samples.save(model, claim / "models" / "transformer.onnx")
    data = claim / "data"
    np.savez(data / "tf-calib.npz", **samples.calibration_inputs(model, 64, seed=1))
    np.savez(data / "tf-request.npz", **samples.calibration_inputs(model, 1, seed=3))


def experiment_manifest(node: str, prometheus_url: str) -> dict[str, Any]:
    """The transformer at FP32 with an FP16 and an INT8 variant beside it."""
    manifest = stack.engine_manifest(
        NAME,
        node=node,
        prometheus_url=prometheus_url,
        model="models/transformer.onnx",
        precision="fp32",
    )
    spec = manifest["spec"]
    del spec["build"]["accuracy"]  # the transformer has no validation set here
    spec["build"]["calibration"] = {"uri": "data/tf-calib.npz"}
    spec["serving"]["resources"] = {"requests": {"cpu": "500m"}}
    spec["cost"] = PRICES
    spec["experiment"] = {
        "variants": [
            {"name": "fp16", "precision": "fp16", "weight": 30},
            {"name": "int8", "precision": "int8", "weight": 30},
        ],
        "minRequests": MIN_REQUESTS,
        "durationSeconds": 600,
        "intervalSeconds": 10,
        "shadowPercent": 50,
        "minShadowSamples": 20,
        "prometheus": {"address": prometheus_url},
        "recommend": {"minOutputAgreement": {"cosine": 0.99}},
    }
    return manifest


def test_fp32_fp16_int8_experiment_ends_with_a_recommendation_and_a_report(
    namespace: str, node_agent: NodeAgentHandle, rollout_stack: dict[str, Any], tmp_path: Path
) -> None:
    url, prom, claim = rollout_stack["url"], rollout_stack["prom"], rollout_stack["claim"]
    fill_transformer(claim)
    stack.apply(namespace, experiment_manifest(node_agent.node, prom.url))
    stack.wait_stable(namespace, NAME, timeout=300)
    stack.wait_for_backend(url)
    weights_seen: list[dict[str, int]] = []
    started = time.monotonic()
    with stack.traffic(url, NAME, claim / "data" / "tf-request.npz", tmp_path, concurrency=2):

        def completed() -> dict[str, Any] | None:
            obj = stack.engine(namespace, NAME)
            exp = obj.get("status", {}).get("experiment") or {}
            if exp.get("phase") == "Running":
                weights = stack.route_weights(namespace, NAME)
                if not weights_seen or weights_seen[-1] != weights:
                    weights_seen.append(weights)
            if exp.get("phase") in ("Failed",):
                raise AssertionError(f"experiment failed: {exp}")
            return obj if exp.get("phase") == "Completed" else None

        try:
            done = wait_for(completed, timeout=900, interval=2, what="the experiment to complete")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status: {stack.engine(namespace, NAME)['status']}"
            ) from exc
    took = time.monotonic() - started
    exp = done["status"]["experiment"]
    print(f"\nexperiment completed in {took:.0f} s: {exp['message']}", file=sys.__stderr__)

    # Fixed weights while it ran; back to the baseline after.
    assert {NAME: 40, f"{NAME}-x-fp16": 30, f"{NAME}-x-int8": 30} in weights_seen, weights_seen
    assert stack.route_weights(namespace, NAME) == {NAME: 100}
    # One build per precision, the baseline's never rebuilt.
    plans = [v["plans"][0] for v in exp["variants"]]
    assert sorted(p["precision"] for p in plans) == ["fp16", "int8"]
    assert len({p["job"] for p in plans} | {done["status"]["plans"][0]["job"]}) == 3
    # Every arm measured; the variants compared on shadow requests and for significance.
    results = {r["name"]: r for r in exp["results"]}
    assert list(results) == ["baseline", "fp16", "int8"]
    for r in results.values():
        assert r["requests"] >= MIN_REQUESTS * 0.9, r  # increase() extrapolates a little
        assert r["p50Ms"] <= r["p95Ms"] <= r["p99Ms"], r
        assert r["errorRate"] == 0, r
        assert r["costPerMillion"] > 0, r
        assert "gpuMemoryMiB" not in r  # no DCGM exporter on CPU: not reported
    for name in ("fp16", "int8"):
        r = results[name]
        assert r["outputAgreement"]["rows"] >= 20, r
        assert r["latency"]["significance"] in ("faster", "slower", "no significant difference")
        assert r["latency"]["lower"] <= r["latency"]["ratio"] <= r["latency"]["upper"], r
    assert results["fp16"]["outputAgreement"]["cosine"] > 0.999  # FP16 of the same weights
    rec = exp["recommendation"]
    assert rec["variant"] in ("baseline", "fp16", "int8")
    assert rec["reason"]
    assert "spec.experiment" in rec["promote"]

    # The report: one command, Markdown + PNG.
    from trtops_operator.experiment import report

    out = tmp_path / "report"
    rc = report.main([NAME, "-n", namespace, "--out", str(out), "--prometheus", prom.url])
    assert rc == 0
    md = (out / f"{NAME}-experiment.md").read_text()
    assert "## Recommendation" in md
    assert f"**{rec['variant']} ({rec['precision']})**" in md
    assert "| fp16 | fp16 | 30 |" in md
    with Image.open(out / f"{NAME}-experiment.png") as img:
        assert img.format == "PNG"
        assert img.size == (1100, 450)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None
    assert len(colors) > 50
    print(f"\n{md}", file=sys.__stderr__)
    if keep := os.environ.get("TRTOPS_EXPERIMENT_REPORT_DIR"):  # to hand on from a CI run
        shutil.copytree(out, keep, dirs_exist_ok=True)
