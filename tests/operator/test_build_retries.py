"""A build failure the worker marks permanent is never retried: the Job's podFailurePolicy
fails it on the worker's exit code, so the build runs once (the issue's INT8 calibration ran
twice, 126 s then 134 s, before the refusal showed). A temporary one is retried as before.

Real API server and Job controller; the test writes the build container's termination as the
kubelet would (kwok runs no containers)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from trtops_worker.contract import EXIT_CODES

from tests.operator.conftest import finish_build_pod
from tests.operator.test_cluster import ACCURACY_REFUSAL, OPERATOR, Cluster
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd", "plans_claim")]


def _retries(spec: dict[str, Any]) -> None:
    spec["build"]["backoffLimit"] = 2  # room for retries: only the policy may stop them


def _pods(cluster: Cluster, job: str) -> list[str]:
    pods = cluster.core.list_namespaced_pod(cluster.ns, label_selector=f"job-name={job}").items
    return sorted(p.metadata.name for p in pods)


def _job_failed(cluster: Cluster, job: str) -> str | None:
    status = cluster.batch.read_namespaced_job_status(job, cluster.ns).status
    for c in status.conditions or []:
        if c.type == "Failed" and c.status == "True":
            return str(c.reason)
    return None


@pytest.fixture
def cluster(k8s_api: Any, namespace: str) -> Cluster:
    return Cluster(k8s_api, namespace)


STORAGE_FAILURE = {
    "ok": False,
    "category": "storage",
    "reason": "StorageUnwritable",
    "message": "/plans is read-only",
}


@pytest.mark.parametrize(
    ("result", "retried"),
    [(ACCURACY_REFUSAL, False), (STORAGE_FAILURE, True)],
    ids=["permanent failure: one pod", "temporary failure: retried"],
)
def test_only_temporary_worker_failures_make_another_build_pod(
    cluster: Cluster,
    kopf_operator: Callable[..., AbstractContextManager[Any]],
    result: dict[str, Any],
    retried: bool,
) -> None:
    with kopf_operator(OPERATOR, namespaces=[cluster.ns]):
        cluster.create("conv", _retries)
        job = wait_for(cluster.jobs, timeout=60, what="a build Job")[0].metadata.name
        pod = cluster.build_pod(job)
        finish_build_pod(cluster.api, cluster.ns, pod, result, EXIT_CODES[result["category"]])
        if retried:
            pods = wait_for(
                lambda: p if len(p := _pods(cluster, job)) > 1 else None,
                timeout=60,
                what="a second build pod",
            )
            assert pod in pods
            assert _job_failed(cluster, job) is None
            return
        reason = wait_for(lambda: _job_failed(cluster, job), timeout=60, what="Job failed")
        assert reason == "PodFailurePolicy"
        built = cluster.wait_condition("conv", "Built", "AccuracyGateFailed")
        assert "0.91" in built["message"]
        assert _pods(cluster, job) == [pod]  # the Job is over: no pod can follow
