"""Canary rollouts end to end, with nothing faked: the local control plane, the local node agent
running the operator's build Jobs and serving pods as real processes, a real Prometheus scraping
the real workers, the operator (KopfRunner), and traffic through a gateway that follows the
HTTPRoute weights the operator sets.

- A good new revision (same model, FP32 -> FP16) goes through its steps and is promoted; the
  stable revision keeps its pods until then.
- A genuinely slower revision (a ~50x heavier model on this CPU) is found slower by the judge
  and rolled back by itself; the test measures the time from the canary's first request to
  weight 0.
- A schema break (the new model renamed its input, so every existing client gets a 400) is
  rolled back at its first analysis, with the reason saying so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.operator_metrics import panels
from tests.support import stack
from tests.support.cluster import kubectl, wait_for
from tests.support.gateway import start_gateway, stats
from tests.support.node_agent_process import NodeAgentHandle

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

NAME = "conv"


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTOPS_WATCH_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("TRTOPS_PROMETHEUS_ADDRESSES", "")


@pytest.fixture
def rollout_stack(
    namespace: str,
    node_agent: NodeAgentHandle,
    trtengine_crd: str,
    prometheus: Callable[..., Any],
    kopf_operator: Callable[..., Any],
    operator_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    stack.fill_claim(node_agent.create_claim(namespace, "plans"))
    # Prometheus scrapes the serving pods and the operator's own metrics port.
    prom = prometheus(panels.serve_operator_metrics(monkeypatch), discover_pods=True)
    monkeypatch.setenv("TRTOPS_PROMETHEUS_ADDRESSES", prom.url)  # the installer allows it
    stack.apply(namespace, stack.http_route_manifest(NAME))
    with (
        kopf_operator("trtops_operator.handlers", namespaces=[namespace], timeout=60) as runner,
        start_gateway(httproute=f"{namespace}/{NAME}", log_dir=tmp_path) as url,
    ):
        yield {
            "prom": prom,
            "url": url,
            "runner": runner,
            "claim": node_agent.claim_dir(namespace, "plans"),
        }


def _deployments(namespace: str) -> dict[str, int]:
    out = kubectl(
        "get",
        "deployments",
        "-n",
        namespace,
        "-l",
        f"trtops.dev/engine={NAME}",
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.trtops\\.dev/revision}={.spec.replicas} {end}",
    )
    return {k: int(v) for k, v in (item.split("=") for item in out.split())}


@contextlib.contextmanager
def _stable_under_traffic(
    namespace: str, node_agent: NodeAgentHandle, rollout_stack: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Revision 1 (conv FP32) built for real and stable at 100 %, with traffic through the
    gateway for the duration; yields the manifest (to change) and the stable engine."""
    url = rollout_stack["url"]
    manifest = stack.engine_manifest(
        NAME, node=node_agent.node, prometheus_url=rollout_stack["prom"].url
    )
    stack.apply(namespace, manifest)
    first = stack.wait_stable(namespace, NAME, timeout=240)
    request = rollout_stack["claim"] / "data" / "request.npz"
    stack.wait_for_backend(url)
    with stack.traffic(url, NAME, request, tmp_path, concurrency=2):
        wait_for(
            lambda: stats(url)["requests"].get(NAME, 0) > 50,
            timeout=60,
            what="traffic to reach stable",
        )
        yield manifest, first


def test_good_canary_is_promoted_and_bad_one_rolled_back(
    namespace: str, node_agent: NodeAgentHandle, rollout_stack: dict[str, Any], tmp_path: Path
) -> None:
    url = rollout_stack["url"]
    with _stable_under_traffic(namespace, node_agent, rollout_stack, tmp_path) as (manifest, first):
        r1 = first["status"]["stable"]["revision"]
        assert first["status"]["plans"][0]["sha256"]

        # --- a good canary: the same model at FP16 ---------------------------------------------
        manifest["spec"]["build"]["precision"] = "fp16"
        stack.apply(namespace, manifest)
        seen_weights: set[int] = set()
        stable_kept_pods = True

        def promoted() -> bool:
            nonlocal stable_kept_pods
            # Deployments first, status second: when status still says the canary runs, the
            # replica counts read before it were read during the canary (the other order
            # races the promotion, which retires r1).
            deployments = _deployments(namespace)
            obj = stack.engine(namespace, NAME)
            st = obj.get("status", {})
            canary = st.get("canary") or {}
            if canary.get("phase") in ("Progressing", "Promoting"):
                seen_weights.add(int(canary.get("weight", 0)))
                # The stable side keeps its full replica count for the whole canary.
                stable_kept_pods &= deployments.get(r1, 0) == 1
            if stack.condition(obj, "RolledBack").get("status") == "True":
                raise AssertionError(
                    f"good canary rolled back: {stack.condition(obj, 'RolledBack')}"
                )
            # Once promoted, status.canary keeps the attempt without its revision (CANARY
            # empty, as Argo Rollouts shows a fully promoted canary) and stable names it.
            stable = st.get("stable", {}).get("revision")
            return canary.get("phase") == "Promoted" and stable not in (None, r1)

        try:
            wait_for(promoted, timeout=300, interval=0.5, what="the FP16 canary to be promoted")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status: {stack.engine(namespace, NAME).get('status')}"
            ) from exc
        good = stack.engine(namespace, NAME)
        r2 = good["status"]["stable"]["revision"]
        assert r2 != r1
        assert 50 in seen_weights, seen_weights  # it went through its step
        assert stable_kept_pods
        assert stats(url)["requests"].get(f"{NAME}-canary", 0) > 0  # the canary really served
        # Stable is replaced only afterwards: r1's pods go once r2 holds 100%.
        wait_for(lambda: set(_deployments(namespace)) == {r2}, timeout=60, what="r1 to be retired")
        wait_for(
            lambda: stack.route_weights(namespace, NAME).get(NAME) == 100,
            timeout=30,
            what="100% on the stable Service",
        )

        # Every operator panel of the dashboard returns data, from the operator's metrics port.
        prom = rollout_stack["prom"]
        panels.wait_operator_panels(prom, namespace, NAME)
        sel = f'namespace="{namespace}", engine="{NAME}"'
        # The FP16 canary is charted at its step's weight; now it holds 100% as stable.
        canary_max = f'max_over_time(trtops_canary_weight{{{sel}, role="canary"}}[10m])'
        assert panels.value(prom, canary_max) == 50
        # Prometheus scrapes every second: the promotion reaches it one scrape after status.
        stable_weight = f'trtops_canary_weight{{{sel}, role="stable"}}'
        wait_for(lambda: panels.value(prom, stable_weight) == 100, timeout=15, what="stable 100")
        # Its accuracy gate as its status reports it; both builds timed, one per precision.
        (plan,) = good["status"]["plans"]
        top1 = plan["accuracy"]["outputs"]["logits"]["top1Agreement"]
        assert panels.value(prom, f'trtops_plan_top1_agreement{{{sel}, revision="{r2}"}}') == top1
        builds = prom.query(f"sum by (precision) (trtops_build_duration_seconds_count{{{sel}}})")
        counts = {r["metric"]["precision"]: r["value"][1] for r in builds}
        assert counts == {"fp32": "1", "fp16": "1"}

        # --- a bad canary: a much heavier model -------------------------------------------------
        before = stats(url)["requests"].get(f"{NAME}-canary", 0)
        manifest["spec"]["model"]["uri"] = "models/conv-heavy.onnx"
        manifest["spec"]["build"]["accuracy"] = (
            None  # a different model: no FP32 agreement to hold it to
        )
        stack.apply(namespace, manifest)
        first_request: float | None = None
        weight_zero: float | None = None

        def rolled_back() -> bool:
            nonlocal first_request, weight_zero
            if first_request is None and stats(url)["requests"].get(f"{NAME}-canary", 0) > before:
                first_request = time.monotonic()
            weights = stack.route_weights(namespace, NAME)
            if (
                first_request is not None
                and weight_zero is None
                and weights.get(f"{NAME}-canary", 0) == 0
            ):
                weight_zero = time.monotonic()
            obj = stack.engine(namespace, NAME)
            return (
                stack.condition(obj, "RolledBack").get("status") == "True"
                and weight_zero is not None
            )

        try:
            wait_for(
                rolled_back, timeout=300, interval=0.25, what="the heavy canary to be rolled back"
            )
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status: {stack.engine(namespace, NAME).get('status')}"
            ) from exc
        bad = stack.engine(namespace, NAME)
        assert first_request is not None
        assert weight_zero is not None
        detection = weight_zero - first_request
        print(f"\ncanary first request -> weight 0: {detection:.1f}s", file=sys.__stderr__)
        rb = stack.condition(bad, "RolledBack")
        assert "p99" in rb["message"] or "latency" in rb["message"].lower(), rb
        assert bad["status"]["stable"]["revision"] == r2  # stable untouched
        assert bad["status"]["lastGoodRevision"] == r2
        # The dashboard shows the rolled-back canary at 0, not left at its last step.
        r3 = bad["status"]["revision"]
        bad_weight = f'trtops_canary_weight{{{sel}, role="canary", revision="{r3}"}}'
        wait_for(lambda: panels.value(prom, bad_weight) == 0, timeout=15, what="canary weight 0")
        assert stack.condition(bad, "Ready")["status"] == "True"
        # The canary is scaled down and gets no more traffic.
        wait_for(
            lambda: _deployments(namespace).get(bad["status"]["revision"], 0) == 0,
            timeout=30,
            what="the canary to be scaled down",
        )
        after = stats(url)["requests"].get(f"{NAME}-canary", 0)
        time.sleep(2)
        assert stats(url)["requests"].get(f"{NAME}-canary", 0) == after
        events = kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"involvedObject.name={NAME}",
            "-o",
            "jsonpath={.items[*].reason}",
        )
        assert "RolledBack" in events or "CanaryRolledBack" in events, events


def test_schema_break_canary_is_rolled_back_at_the_first_analysis(
    namespace: str, node_agent: NodeAgentHandle, rollout_stack: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 13, input 1, on the real stack: the new revision renamed its input, so every
    request the clients send it is answered 400 (client_error) and it has no latency at all.
    The old judge passed it ("ratio not checked"); now the first analysis with minRequests
    canary requests fails it as catastrophic and it is rolled back without waiting for
    failureLimit, with stable untouched."""
    url = rollout_stack["url"]
    with _stable_under_traffic(namespace, node_agent, rollout_stack, tmp_path) as (manifest, first):
        r1 = first["status"]["stable"]["revision"]
        manifest["spec"]["model"]["uri"] = "models/conv-renamed.onnx"
        manifest["spec"]["build"]["accuracy"] = None  # the validation data names the old input
        stack.apply(namespace, manifest)

        def rolled_back() -> bool:
            obj = stack.engine(namespace, NAME)
            return stack.condition(obj, "RolledBack").get("status") == "True"

        try:
            wait_for(rolled_back, timeout=300, interval=0.5, what="the schema break rolled back")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status: {stack.engine(namespace, NAME).get('status')}"
            ) from exc
        assert stats(url)["requests"].get(f"{NAME}-canary", 0) > 0  # it did get traffic

    bad = stack.engine(namespace, NAME)
    canary = bad["status"]["canary"]
    rollback = canary["rollback"]
    assert rollback["reason"] == "CatastrophicFailure", rollback
    assert "not waiting for failureLimit" in rollback["message"], rollback
    assert "requests successfully" in rollback["message"], rollback
    assert "client errors" in rollback["message"], rollback
    assert stack.condition(bad, "RolledBack")["reason"] == "CatastrophicFailure"
    # One Failed analysis was enough, and it had the evidence: minRequests requests, all 4xx.
    failed = [h for h in canary["history"] if h["verdict"] == "Failed"]
    assert len(failed) == 1, canary["history"]
    assert failed[0]["canary"]["requests"] >= 20
    assert failed[0]["canary"]["clientErrorRate"] == 1.0
    assert failed[0]["canary"].get("p99Ms") is None  # no successful request: no latency
    assert bad["status"]["stable"]["revision"] == r1
    wait_for(
        lambda: stack.route_weights(namespace, NAME).get(f"{NAME}-canary", 0) == 0,
        timeout=30,
        what="canary weight 0",
    )


def test_no_traffic_prometheus_down_and_operator_restart_never_promote_or_jump(
    namespace: str,
    node_agent: NodeAgentHandle,
    trtengine_crd: str,
    prometheus: Callable[..., Any],
    kopf_operator: Callable[..., Any],
    operator_env: None,
    tmp_path: Path,
) -> None:
    """Without traffic the canary's analyses are InsufficientData (not failures); with Prometheus
    down they are Inconclusive and nothing is promoted; an operator killed mid-analysis resumes at
    the same step with the same weights."""
    stack.fill_claim(node_agent.create_claim(namespace, "plans"))
    prom = prometheus({}, discover_pods=True)
    os.environ["TRTOPS_PROMETHEUS_ADDRESSES"] = prom.url  # operator_env restores it afterwards
    stack.apply(namespace, stack.http_route_manifest(NAME))
    manifest = stack.engine_manifest(
        NAME,
        node=node_agent.node,
        prometheus_url=prom.url,
        steps=[{"setWeight": 30, "pauseSeconds": 10}, {"setWeight": 60, "pauseSeconds": 10}],
    )
    canary_svc = f"{NAME}-canary"

    def canary() -> dict[str, Any]:
        return dict(stack.engine(namespace, NAME)["status"].get("canary") or {})

    with kopf_operator("trtops_operator.handlers", namespaces=[namespace], timeout=60):
        stack.apply(namespace, manifest)
        stack.wait_stable(namespace, NAME, timeout=240)
        manifest["spec"]["build"]["precision"] = "fp16"
        stack.apply(namespace, manifest)
        # No traffic at all: two analyses come back InsufficientData, and nothing moves on.
        wait_for(
            lambda: (
                sum(h["verdict"] == "InsufficientData" for h in canary().get("history", [])) >= 2
            ),
            timeout=120,
            what="two InsufficientData analyses",
        )
        state = canary()
        assert state["phase"] == "Progressing"
        assert state["stepIndex"] == 0
        assert state["weight"] == 30
        assert stack.route_weights(namespace, NAME) == {NAME: 70, canary_svc: 30}
        assert stack.condition(stack.engine(namespace, NAME), "RolledBack").get("status") != "True"

        # Prometheus down: Inconclusive, said so in a condition, never a promotion.
        prom.stop()
        wait_for(
            lambda: canary().get("lastVerdict") == "Inconclusive",
            timeout=60,
            what="an Inconclusive analysis",
        )
        progressing = stack.condition(stack.engine(namespace, NAME), "Progressing")
        assert progressing["reason"] == "AnalysisInconclusive", progressing
        before = canary()

    # The operator is gone mid-canary; the route keeps its weights while it is down...
    assert stack.route_weights(namespace, NAME) == {NAME: 70, canary_svc: 30}
    time.sleep(3)
    # ...and a new operator picks up at the same step with the same weights.
    seen: set[tuple[int, int]] = set()
    with kopf_operator("trtops_operator.handlers", namespaces=[namespace], timeout=60):
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            w = stack.route_weights(namespace, NAME)
            seen.add((w.get(NAME, -1), w.get(canary_svc, -1)))
            time.sleep(0.5)
        after = canary()
    assert seen == {(70, 30)}, seen
    assert after["stepIndex"] == before["stepIndex"] == 0
    assert after["startedAt"] == before["startedAt"]  # the same attempt, not a new one
    assert after["phase"] == "Progressing"
