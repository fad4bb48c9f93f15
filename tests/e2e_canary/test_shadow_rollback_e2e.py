"""An INT8 canary calibrated on bad data is rolled back on output agreement, driven by the operator,
with nothing faked: the local control plane, the local node agent running the real build Jobs
and serving pods, a real Prometheus scraping them and the operator, traffic through the gateway.

The bad plan is a real INT8 quantization (the worker's ModelOpt path on ONNX Runtime) of the same
FP32 model, calibrated on inputs at 1 % of the live inputs' scale (a camera feed recorded at the
wrong gain, say), so the activation ranges it learned clip almost every live activation. Its
build-time accuracy gate is switched off (``spec.build.accuracy`` left out), so the build
passes. It is as fast as stable and answers without errors, so every latency and error check
passes; only the output agreement on shadow requests (stable pods send every request they
answer to the ``<engine>-canary`` Service, which the node agent resolves as cluster DNS and
kube-proxy would) fails it.

While the canary runs, every panel of the value dashboard (dashboards/trtops-value.json) except
the GPU ones returns data from the same Prometheus: baseline against optimized, cost included.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e_canary.test_canary_e2e import NAME, operator_env, rollout_stack
from tests.operator_metrics import panels
from tests.support import stack
from tests.support.cluster import wait_for
from tests.support.gateway import stats
from tests.support.node_agent_process import NodeAgentHandle

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]
__all__ = ["operator_env", "rollout_stack"]  # the fixtures this module uses

MIN_COSINE = 0.95
PRICES = {"gpuHourPrice": 2.5, "cpuHourPrice": 0.04, "currency": "USD"}


def _manifest(node: str, prometheus_url: str) -> dict[str, Any]:
    manifest = stack.engine_manifest(
        NAME,
        node=node,
        prometheus_url=prometheus_url,
        # Long enough a step for the analyses to judge it (every 10 s); a pass never promotes
        # before the step's pause is over.
        steps=[{"setWeight": 50, "pauseSeconds": 120}],
        slo={
            "maxErrorRate": 0.01,
            "p99LatencyMs": 2000,
            "minOutputAgreement": {"cosine": MIN_COSINE},
        },
        # A shared 2-core machine: INT8 on ONNX Runtime is no faster than FP32 here, and the
        # two pods' latencies differ by noise; only a 3x slowdown fails (docs/canary.md).
        judge={"minLatencyEffect": 3.0},
    )
    spec = manifest["spec"]
    spec["rollout"]["analysis"]["shadow"] = {"percent": 100, "minSamples": 30}
    spec["serving"]["resources"] = {"requests": {"cpu": "500m"}}
    spec["cost"] = PRICES
    return manifest


def _has_data(rows: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in rows)


def _value_panels(prom: Any, namespace: str, at: float) -> dict[str, list[dict[str, Any]]]:
    """Every value-dashboard panel without GPU metrics, for this engine, at Unix time ``at``."""
    variables = {"namespace": namespace, "model": NAME}
    return {
        f"{q.panel} ({q.ref_id})": prom.query(panels.dq.substitute(q.expr, variables), at=at)
        for q in panels.dq.queries(panels.dq.load(panels.dq.VALUE_DASHBOARD))
        if q.source in ("worker", "operator")
    }


def test_int8_calibrated_on_bad_data_is_rolled_back_on_output_agreement(
    namespace: str, node_agent: NodeAgentHandle, rollout_stack: dict[str, Any], tmp_path: Path
) -> None:
    url, prom, claim = rollout_stack["url"], rollout_stack["prom"], rollout_stack["claim"]
    good = np.load(claim / "data" / "calib.npz")
    np.savez(claim / "data" / "calib-dim.npz", **{k: v * 0.01 for k, v in good.items()})

    manifest = _manifest(node_agent.node, prom.url)
    stack.apply(namespace, manifest)
    first = stack.wait_stable(namespace, NAME, timeout=240)
    r1 = first["status"]["stable"]["revision"]
    stack.wait_for_backend(url)
    with stack.traffic(url, NAME, claim / "data" / "request.npz", tmp_path, concurrency=2):
        wait_for(lambda: stats(url)["requests"].get(NAME, 0) > 50, timeout=60, what="traffic")

        # --- the bad INT8 revision, its gate off ----------------------------------------------
        build = manifest["spec"]["build"]
        build.update(precision="int8", calibration={"uri": "data/calib-dim.npz"})
        del build["accuracy"]
        stack.apply(namespace, manifest)
        sel = f'namespace="{namespace}", model="{NAME}"'
        compared = f'sum(trtops_shadow_requests_total{{{sel}, outcome="compared"}})'
        shadowed_at: float | None = None
        canary_revision = ""

        def rolled_back() -> dict[str, Any] | None:
            nonlocal shadowed_at, canary_revision
            obj = stack.engine(namespace, NAME)
            canary = obj.get("status", {}).get("canary") or {}
            if canary.get("phase") == "Progressing" and canary.get("weight", 0) > 0:
                canary_revision = canary.get("revision", "")
                if shadowed_at is None and (panels.value(prom, compared) or 0) > 30:
                    shadowed_at = time.time()
            if stack.condition(obj, "RolledBack").get("status") == "True":
                return obj
            return None

        try:
            bad = wait_for(rolled_back, timeout=420, interval=1, what="the INT8 canary rollback")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status: {stack.engine(namespace, NAME)['status']}"
            ) from exc
        rolled_back_at = time.time()

    # Rolled back on output agreement, with the numbers; stable untouched.
    status = bad["status"]
    message = stack.condition(bad, "RolledBack")["message"]
    print(f"\nRolledBack: {message}", file=sys.__stderr__)
    assert "mean cosine" in message, message
    assert "latency" not in message.lower(), message
    assert "error rate" not in message.lower(), message
    assert status["stable"]["revision"] == r1
    assert status["lastGoodRevision"] == r1
    assert canary_revision
    assert canary_revision != r1
    assert shadowed_at is not None, "stable never shadowed requests to the canary"

    # The canary passed every latency and error check: measured over the canary's life, from the
    # same Prometheus the analysis read.
    window = f"{max(1, int(rolled_back_at - shadowed_at) + 30)}s"
    rev = f'{sel}, revision="{canary_revision}"'
    errors = panels.value(
        prom,
        f'sum(increase(trtops_requests_total{{{rev}, outcome!="success"}}[{window}]))',
    )
    served = panels.value(prom, f"sum(increase(trtops_requests_total{{{rev}}}[{window}]))")
    p99 = panels.value(
        prom,
        "histogram_quantile(0.99, sum by (le) (increase("
        f"trtops_request_duration_seconds_bucket{{{rev}}}[{window}])))",
    )
    cosine = panels.value(
        prom,
        f'sum(increase(trtops_shadow_cosine_sum{{{sel}, candidate_revision="{canary_revision}"}}'
        f"[{window}])) / sum(increase(trtops_shadow_cosine_count{{{sel},"
        f' candidate_revision="{canary_revision}"}}[{window}]))',
    )
    print(
        f"INT8 canary: {served} requests served, {errors} errors, p99 {p99} s,"
        f" mean cosine with FP32 {cosine}",
        file=sys.__stderr__,
    )
    assert served is not None
    assert served > 20
    assert errors == 0
    assert p99 is not None
    assert p99 < 2.0
    assert cosine is not None
    assert cosine < MIN_COSINE

    # The value dashboard: every non-GPU panel had data while the canary ran.
    results = _value_panels(prom, namespace, at=rolled_back_at - 2)
    missing = [panel for panel, rows in results.items() if not _has_data(rows)]
    assert missing == [], missing
    for row in results["Cost per 1M inferences (A)"]:
        print(f"cost per 1M: {row['metric']} {row['value'][1]}", file=sys.__stderr__)
    precisions = {r["metric"]["precision"] for r in results["Cost per 1M inferences (A)"]}
    assert precisions == {"fp32", "int8"}, results["Cost per 1M inferences (A)"]
    relative = {
        r["metric"]["precision"]: float(r["value"][1])
        for r in results["Cost per 1M inferences relative to the baseline (A)"]
    }
    print(f"cost per 1M relative to FP32: {relative}", file=sys.__stderr__)
    assert relative["fp32"] == 1.0  # the baseline against itself
    assert relative["int8"] > 0
