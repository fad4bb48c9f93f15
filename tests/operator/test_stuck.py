"""Every stuck state is named in status within one reconcile, in the cluster's own words, and
clears by itself: pod statuses as the scheduler and kubelet write them, through the pure
reconcile. (The same states on the real cluster: ``test_stuck_cluster.py``.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from trtops_operator.observation import (
    PodObs,
    ServingPodObs,
    pod_stuck,
    summarize_pod,
    summarize_serving_pod,
)
from trtops_operator.reconcile import DeploymentObs, JobObs, Observed, decide

from tests.operator.test_reconcile import CONFIG, NOW, RESULT, body, cond, job_name

MISSING_CLAIM = (
    '0/3 nodes are available: persistentvolumeclaim "trt-plans" not found.'
    " preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
)
UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": MISSING_CLAIM,
        }
    ],
}
PULL = {
    "phase": "Pending",
    "containerStatuses": [
        {
            "name": "build",
            "state": {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "ghcr.io/trtops/trtops-worker:nope"',
                }
            },
        }
    ],
}
CRASHLOOP = {
    "phase": "Running",
    "containerStatuses": [
        {
            "name": "serve",
            "restartCount": 4,
            "state": {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 1m20s restarting failed container=serve",
                }
            },
            "lastState": {"terminated": {"reason": "Error", "exitCode": 2}},
        }
    ],
}
OOM_LOOP = {
    "phase": "Running",
    "containerStatuses": [
        {
            "name": "serve",
            "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        }
    ],
}


def pod(status: dict[str, Any], *, job: str) -> PodObs:
    labels = {"job-name": job}
    return summarize_pod(
        {"metadata": {"name": "p", "labels": labels, "creationTimestamp": "t"}, "status": status}
    )


def serving_pod(status: dict[str, Any], *, revision: str, name: str) -> ServingPodObs:
    labels = {"trtops.dev/engine": "e", "trtops.dev/revision": revision}
    return summarize_serving_pod({"metadata": {"name": name, "labels": labels}, "status": status})


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        (UNSCHEDULABLE, "Unschedulable", 'persistentvolumeclaim "trt-plans" not found'),
        (PULL, "ImagePullBackOff", "Back-off pulling image"),
        (CRASHLOOP, "CrashLoopBackOff", "restarting failed container=serve"),
        (OOM_LOOP, "OOMKilled", "out of memory"),
    ],
)
def test_pod_status_names_what_keeps_it_stuck(
    status: dict[str, Any], reason: str, words: str
) -> None:
    stuck = pod_stuck(status)
    assert stuck is not None
    assert (stuck.reason, words in stuck.message) == (reason, True)


def test_healthy_and_finished_pods_are_not_stuck() -> None:
    assert (
        pod_stuck({"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}) is None
    )
    assert pod_stuck({"phase": "Pending", "containerStatuses": [
        {"state": {"waiting": {"reason": "ContainerCreating"}}}]}) is None  # fmt: skip
    assert pod_stuck({"phase": "Failed"}) is None


def _building(status: dict[str, Any]) -> Observed:
    return Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",))},
        pods={job_name(): [pod(status, job=job_name())]},
    )


@pytest.mark.parametrize(
    ("status", "reason"), [(UNSCHEDULABLE, "Unschedulable"), (PULL, "ImagePullBackOff")]
)
def test_a_stuck_build_pod_is_named_on_built_ready_and_degraded(
    status: dict[str, Any], reason: str
) -> None:
    d = decide(body(), _building(status), CONFIG, NOW)
    built, ready = cond(d, "Built"), cond(d, "Ready")
    assert (built["status"], built["reason"]) == ("False", reason)
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert cond(d, "Degraded")["reason"] == reason
    words = MISSING_CLAIM if status is UNSCHEDULABLE else "Back-off pulling image"
    assert words in built["message"]
    assert words in ready["message"]  # what `kubectl get trt -o wide` shows
    assert any(e.type == "Warning" and e.reason == reason for e in d.events)
    # The claim appears, the pod is scheduled: the next reconcile says Building again.
    healed = decide(body(d.status), _building({"phase": "Pending"}), CONFIG, NOW)
    assert cond(healed, "Built")["reason"] == "Building"
    assert cond(healed, "Degraded")["reason"] == "AsExpected"


def test_a_build_killed_for_memory_fails_as_oomkilled_not_a_log_tail() -> None:
    oom = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "build",
                "state": {
                    "terminated": {"reason": "OOMKilled", "exitCode": 137, "message": "Killed"}
                },
            }
        ],
    }
    obs = Observed(
        jobs={
            job_name(): JobObs(
                job_name(), ("u1",), failed=True, failure_reason="BackoffLimitExceeded"
            )
        },
        pods={job_name(): [pod(oom, job=job_name())]},
    )
    built = cond(decide(body(), obs, CONFIG, NOW), "Built")
    assert built["reason"] == "OOMKilled"
    assert "out of memory" in built["message"]


def test_a_job_past_its_deadline_is_named() -> None:
    obs = Observed(
        jobs={
            job_name(): JobObs(
                job_name(),
                ("u1",),
                failed=True,
                failure_reason="DeadlineExceeded",
                failure_message="Job was active longer than specified deadline",
            )
        },
    )
    d = decide(body(), obs, CONFIG, NOW)
    assert cond(d, "Built")["reason"] == "DeadlineExceeded"
    assert "longer than specified deadline" in cond(d, "Ready")["message"]


def _serving(
    first_status: dict[str, Any], serving_pods: list[ServingPodObs]
) -> tuple[Any, Observed]:
    built = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), succeeded=True)},
        pods={job_name(): [PodObs("b", job_name(), "t", "Succeeded", json.dumps(RESULT))]},
    )
    d = decide(body(), built, CONFIG, NOW)
    dep = next(o for o in d.apply if o["kind"] == "Deployment")
    name, h = dep["metadata"]["name"], dep["metadata"]["annotations"]["trtops.dev/spec-hash"]
    return d, Observed(
        jobs=built.jobs,
        pods=built.pods,
        deployments={name: DeploymentObs(name, "e", h, 1, 1, 1, 1, 1, 0)},  # none available
        serving_pods=serving_pods,
    )


@pytest.mark.parametrize(
    ("status", "reason"), [(CRASHLOOP, "CrashLoopBackOff"), (OOM_LOOP, "OOMKilled")]
)
def test_a_stuck_serving_pod_is_named_on_ready(status: dict[str, Any], reason: str) -> None:
    first, _ = _serving({}, [])
    rev = first.status["revision"]
    _, obs = _serving({}, [serving_pod(status, revision=rev, name="e-x-1")])
    d = decide(body(first.status), obs, CONFIG, NOW)
    ready = cond(d, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert f"revision {rev}: pod e-x-1" in ready["message"]
    assert cond(d, "Degraded")["reason"] == reason
    _, healthy = _serving({}, [serving_pod({"phase": "Running"}, revision=rev, name="e-x-1")])
    d2 = decide(body(d.status), healthy, CONFIG, NOW)
    assert cond(d2, "Ready")["reason"] == "Starting"
    assert cond(d2, "Degraded")["reason"] == "AsExpected"


def test_the_job_controllers_verdict_counts_before_its_pods_are_gone() -> None:
    """``FailureTarget`` comes first; ``Failed`` waits for every pod to end, and a pod on a lost
    node may never end."""
    from trtops_operator.observation import summarize_job

    job = summarize_job(
        {
            "metadata": {"name": "j"},
            "status": {
                "conditions": [
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ]
            },
        }
    )
    assert (job.failed, job.failure_reason) == (True, "DeadlineExceeded")
