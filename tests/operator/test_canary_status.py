"""What ``kubectl get trt`` and the status say about a canary, on the real API server: the
printer columns after a promotion, and no status write on a pass that learnt nothing new."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.operator.test_cluster import OPERATOR, SUCCESS, Cluster
from tests.operator.test_cluster import cluster as cluster  # the fixture, shared
from tests.operator.test_cluster import pytestmark as pytestmark  # cluster, CRD, claim
from tests.operator.test_stuck_cluster import _row
from tests.support.cluster import kubectl, wait_for


def _canary(
    steps: list[dict[str, Any]], router: dict[str, Any]
) -> Callable[[dict[str, Any]], None]:
    def patch(spec: dict[str, Any]) -> None:
        spec["rollout"] = {"trafficRouter": router, "steps": steps}

    return patch


def _http_route(cluster: Cluster, opted_in: bool) -> dict[str, Any]:
    """HTTPRoute ``conv`` sending everything to Service conv; annotated for engine conv or not."""
    notes = "  annotations: {trtops.dev/engine: conv}\n" if opted_in else ""
    kubectl(
        "apply",
        "-n",
        cluster.ns,
        "-f",
        "-",
        input_text=(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata:\n  name: conv\n{notes}"
            "spec:\n  parentRefs: [{name: gw}]\n"
            "  rules: [{backendRefs: [{name: conv, port: 8000}]}]\n"
        ),
    )
    return {"gatewayAPI": {"httpRoute": "conv"}}


def _start_canary(
    cluster: Cluster, steps: list[dict[str, Any]], router: dict[str, Any] | None = None
) -> str:
    """conv serving revision r1, then a new model whose build succeeded: returns r1."""
    spec_patch = _canary(steps, router or {"replicas": {}})
    cluster.build_and_finish("conv", SUCCESS, ("Ready", "Serving"), spec_patch)
    (first,) = cluster.jobs()
    r1 = wait_for(lambda: cluster.get("conv")["status"]["stable"]["revision"], timeout=30)
    cluster.custom.patch_namespaced_custom_object(
        "trtops.dev",
        "v1alpha1",
        cluster.ns,
        "trtengines",
        "conv",
        {"spec": {"model": {"uri": "models/conv2.onnx"}}},
    )
    cluster.finish_build(SUCCESS, after={first.metadata.name})
    return str(r1)


def test_after_a_promotion_the_canary_columns_are_cleared(
    cluster: Cluster, kopf_operator: Callable[..., AbstractContextManager[Any]]
) -> None:
    """Before: after a promotion ``kubectl get trt`` showed the promoted revision under CANARY
    at WEIGHT 0 until the next change. Now CANARY is empty and WEIGHT 0 (Argo Rollouts sets
    the canary weight to 0 once fully promoted); the attempt's record stays (phase Promoted)."""
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        r1 = _start_canary(cluster, [{"setWeight": 50, "pauseSeconds": 0}])

        def promoted() -> dict[str, Any] | None:
            status = cluster.get("conv")["status"]
            stable = status["stable"]["revision"]
            return status if stable != r1 and stable == status.get("revision") else None

        status = wait_for(promoted, timeout=120, what="the canary promoted")
        row = _row(cluster, "conv")
        assert (row["SERVING"], row["WEIGHT"]) == (status["revision"], "0"), row
        assert row["CANARY"] in ("", "<none>"), row  # kubectl's blank
        assert status["canary"]["phase"] == "Promoted"
        assert "revision" not in status["canary"]
        assert "canary" not in cluster.condition("conv", "Ready")["message"]


@pytest.mark.parametrize("route", ["replicas", "gatewayAPI", "gatewayAPI not opted in"])
def test_a_canary_pass_with_nothing_new_writes_no_status(
    cluster: Cluster,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
    monkeypatch: pytest.MonkeyPatch,
    route: str,
) -> None:
    """A canary holding at its step, re-checked every 2 s: the operator sends no status
    patch and the engine's resourceVersion stays put (before, status was patched on every pass
    while the route was unusable; the API server dropped the empty change, the requests stayed).
    """
    from trtops_operator import metrics
    from trtops_operator.k8s import Api

    patches: list[dict[str, Any]] = []  # what the operator asked the API server to write
    write = Api.patch_status

    def counted(self: Api, namespace: str, name: str, status: Any) -> Any:
        patches.append(dict(status))
        return write(self, namespace, name, status)

    monkeypatch.setattr(Api, "patch_status", counted)

    router = {"replicas": {}}
    if route != "replicas":
        router = _http_route(cluster, opted_in=route == "gatewayAPI")
    monkeypatch.setenv("TRTOPS_RESYNC_SECONDS", "2")
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        _start_canary(cluster, [{"setWeight": 50, "pauseSeconds": 3600}], router)
        if route == "gatewayAPI not opted in":
            cluster.wait_condition("conv", "Degraded", "RouterMisconfigured")
        wait_for(
            lambda: (
                (cluster.get("conv")["status"].get("canary") or {}).get("phase") == "Progressing"
            ),
            timeout=120,  # a loaded machine: the operator re-checks every engine every 2 s
            what="the canary at its step",
        )
        time.sleep(5)  # the canary pods' readiness reaches status first
        before = cluster.get("conv")["metadata"]["resourceVersion"]
        passes = metrics.RECONCILES.labels(trigger="watch")._value.get()
        patches.clear()
        changes = []
        end = time.monotonic() + 12
        while time.monotonic() < end:
            rv = cluster.get("conv")["metadata"]["resourceVersion"]
            if rv != before and rv not in changes:
                changes.append(rv)
            time.sleep(0.2)
        passes = metrics.RECONCILES.labels(trigger="watch")._value.get() - passes
    assert passes >= 4, passes  # the engine was reconciled all along
    now = cluster.get("conv")["status"]
    differ = sorted({k for p in patches for k, v in p.items() if now.get(k) != v})
    assert (patches, changes) == ([], []), f"{len(patches)} patches over {passes} passes: {differ}"
