"""The operator's Prometheus endpoint, served by the real ``trtops-operator`` entry point.

Two engines, one build that succeeds and one the worker fails: the endpoint must count each
build once by outcome, time the successful build, report its plan's accuracy gate, count the
reconciles by what triggered them, and time every reconcile.

The storage claim is labelled mountable but never bound (no volume exists for it), so the build
pods never schedule and kwok never finishes them: the worker's result written here is the only
way each build ends (kwok would otherwise race it with a result-less completion).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.conftest import finish_build_pod
from tests.support.cluster import wait_for
from tests.support.prometheus import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd")]

ENGINE: dict[str, Any] = {
    "apiVersion": "trtops.dev/v1alpha1",
    "kind": "TrtEngine",
    "metadata": {"name": "placeholder"},
    "spec": {
        "model": {"uri": "models/placeholder.onnx"},
        "build": {"precision": "fp32", "backoffLimit": 0},
        "storage": {"claimName": "trt-plans"},
        "serving": {"backend": "onnxruntime"},
    },
}
SUCCESS = {
    "ok": True,
    "key": "a" * 64,
    "path": "/plans/" + "a" * 64,
    "artifact": "model.onnx",
    "sha256": "b" * 64,
    "precision": "fp32",
    "backend": "onnxruntime",
    "cached": False,
    "buildSeconds": 2.5,
    "accuracy": {
        "passed": True,
        "outputs": {"logits": {"top1Agreement": 0.995, "meanAbsError": 0.0125}},
    },
}
FAILURE = {
    "ok": False,
    "category": "accuracy",
    "reason": "AccuracyGateFailed",
    "message": "top-1 agreement 0.91 is below 0.99",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _operator_binary() -> str:
    beside = Path(sys.executable).parent / "trtops-operator"
    found = str(beside) if beside.exists() else shutil.which("trtops-operator")
    assert found, "the trtops-operator entry point is not installed (pip install -e .)"
    return found


@contextlib.contextmanager
def operator_process(namespace: str, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``trtops-operator`` watching ``namespace`` with metrics on ``port``; stopped by SIGTERM."""
    args = [_operator_binary(), "-n", namespace, "--metrics-port", str(port)]
    args += ["--metrics-address", "127.0.0.1", "--liveness", ""]
    # Short watches: kopf ends a watch (and so a shutdown) only when its server timeout ends.
    env = {**os.environ, "TRTOPS_WATCH_TIMEOUT_SECONDS": "5"}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    except BaseException as exc:
        exc.add_note(f"operator log (tail):\n{log.read_text()[-4000:]}")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def one(samples: Samples, name: str) -> float:
    return samples[(name, ())]


def series(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Engines:
    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def unbound_claim(self, name: str) -> None:
        """A claim that opts in to being mounted but has no volume: its pods stay Pending."""
        self.core.create_namespaced_persistent_volume_claim(
            self.ns,
            {
                "metadata": {"name": name, "labels": {"trtops.dev/mountable": "true"}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )

    def create(self, name: str) -> None:
        body = copy.deepcopy(ENGINE)
        body["metadata"]["name"] = name
        body["spec"]["model"]["uri"] = f"models/{name}.onnx"
        self.custom.create_namespaced_custom_object(
            "trtops.dev", "v1alpha1", self.ns, "trtengines", body
        )

    def built(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "trtops.dev", "v1alpha1", self.ns, "trtengines", name
        )
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((dict(c) for c in conds if c["type"] == "Built"), {})

    def revision(self, name: str) -> str:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "trtops.dev", "v1alpha1", self.ns, "trtengines", name
        )
        return str(obj["status"]["revision"])

    def plans(self, name: str) -> list[dict[str, Any]]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "trtops.dev", "v1alpha1", self.ns, "trtengines", name
        )
        return list((obj.get("status") or {}).get("plans") or [])

    def finish_build(self, name: str, result: dict[str, Any]) -> None:
        def pod() -> str | None:
            pods = self.core.list_namespaced_pod(
                self.ns, label_selector=f"trtops.dev/component=build,trtops.dev/engine={name}"
            ).items
            return pods[0].metadata.name if pods else None

        finish_build_pod(
            self.api, self.ns, wait_for(pod, timeout=60, what=f"{name}'s build pod"), result
        )


def test_metrics_count_reconciles_and_build_outcomes(
    k8s_api: Any, namespace: str, tmp_path: Path
) -> None:
    engines = Engines(k8s_api, namespace)
    engines.unbound_claim("trt-plans")
    port = free_port()
    with operator_process(namespace, port, tmp_path / "operator.log") as proc:
        wait_for(lambda: scrape(port), timeout=60, what="the operator's metrics endpoint")
        engines.create("good")
        engines.create("bad")
        engines.finish_build("good", SUCCESS)
        engines.finish_build("bad", FAILURE)
        wait_for(
            lambda: engines.built("good").get("status") == "True",
            timeout=60,
            what="good Built=True",
        )
        wait_for(
            lambda: engines.built("bad").get("reason") == "AccuracyGateFailed",
            timeout=60,
            what="bad Built=False with the worker's reason",
        )

        # The counters move right after the status writes that the waits above saw.
        def counted(samples: Samples) -> bool:
            outcomes = by_label(samples, "trtops_builds_total", "outcome")
            return outcomes.get("succeeded", 0) >= 1 and outcomes.get("failed", 0) >= 1

        deadline = time.monotonic() + 10
        samples = scrape(port)
        while not counted(samples) and time.monotonic() < deadline:
            time.sleep(0.2)
            samples = scrape(port)
        assert proc.poll() is None, "the operator exited"
        # good's plan is its own build: nobody else had it to reuse.
        (plan,) = engines.plans("good")
        assert plan["sha256"] == SUCCESS["sha256"]
        assert not plan.get("reused"), plan
        revision = engines.revision("good")

    assert proc.returncode == 0, "SIGTERM should stop the operator cleanly"
    # Each build counted once, by how it ended (not once per reconcile that saw it); the
    # outcomes nothing reached yet are there at 0 (so a dashboard's increase() sees the first).
    assert by_label(samples, "trtops_builds_total", "outcome") == {
        "succeeded": 1,
        "failed": 1,
        "cached": 0,
        "reused": 0,
    }
    # The successful build is timed as the worker reported it; the failed one is not timed,
    # but its series started at 0 while it built.
    good = {"namespace": namespace, "engine": "good", "precision": "fp32", "target": "cpu"}
    bad = {**good, "engine": "bad"}
    assert series(samples, "trtops_build_duration_seconds_count", **good) == 1
    assert series(samples, "trtops_build_duration_seconds_sum", **good) == 2.5
    assert series(samples, "trtops_build_duration_seconds_bucket", **good, le="1.0") == 0
    assert series(samples, "trtops_build_duration_seconds_bucket", **good, le="5.0") == 1
    assert series(samples, "trtops_build_duration_seconds_count", **bad) == 0
    # The accuracy gate of good's plan, read from its status at scrape time.
    gate = {**good, "revision": revision, "output": "logits"}
    assert series(samples, "trtops_plan_top1_agreement", **gate) == 0.995
    assert series(samples, "trtops_plan_mean_abs_error", **gate) == 0.0125
    assert {dict(labels)["engine"] for (n, labels) in samples if n.startswith("trtops_plan_")} == {
        "good"
    }
    # Neither engine serves (no claim, so no pod starts): no traffic weight to report.
    assert not [k for k in samples if k[0] == "trtops_canary_weight"]
    # Each new engine is reconciled once from its creation; the build pods finishing woke
    # the engines again through the watches.
    reconciles = by_label(samples, "trtops_reconciles_total", "trigger")
    assert reconciles.get("create") == 2
    assert reconciles.get("watch", 0) >= 2
    # Every reconcile is timed; the histogram is cumulative and ends at the count.
    count = one(samples, "trtops_reconcile_duration_seconds_count")
    assert count == sum(reconciles.values())
    assert 0 < one(samples, "trtops_reconcile_duration_seconds_sum") < 60 * count
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (n, labels), v in samples.items()
        if n == "trtops_reconcile_duration_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), count)
    # A worker's failure is a build outcome, not a reconcile error.
    assert not any(by_label(samples, "trtops_reconcile_errors_total", "kind").values())
