"""The pure decisions behind the fault matrix (tests/faults runs them on the local stack):
Ready while capacity is reduced, storage faults retried by themselves with a growing wait,
a copy older than the operator's own write never acted on, and a Job's creation told once."""

from __future__ import annotations

import json
from typing import Any

from trtops_operator.freshness import LastWrites
from trtops_operator.reconcile import DeploymentObs, JobObs, Observed, PodObs, decide

from tests.operator.test_reconcile import CONFIG, NOW, RESULT, SPEC, body, cond, job_name

H = "trtops.dev/spec-hash"


def _serving(replicas: int, available: int) -> tuple[dict[str, Any], Observed]:
    """An engine serving with ``replicas`` desired and ``available`` pods, after its build."""
    spec = {**SPEC, "serving": {"replicas": replicas}}
    built = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), succeeded=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Succeeded", json.dumps(RESULT))]},
    )
    b = {**body(), "spec": spec}
    first = decide(b, built, CONFIG, NOW)
    dep = next(o for o in first.apply if o["kind"] == "Deployment")
    name = dep["metadata"]["name"]
    obs = Observed(
        deployments={
            name: DeploymentObs(
                name,
                "e",
                dep["metadata"]["annotations"][H],
                1,
                1,
                replicas,
                replicas,
                replicas,
                available,
            )
        }
    )
    return {**b, "status": first.status}, obs


def test_one_of_two_stable_pods_lost_is_ready_with_reduced_capacity() -> None:
    b, full = _serving(2, 2)
    d = decide(b, full, CONFIG, "2026-01-01T00:01:00Z")
    ready = cond(d, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert "2/2 pods available" in ready["message"]

    b, half = _serving(2, 1)
    b["status"] = d.status
    lost = decide(b, half, CONFIG, "2026-01-01T00:02:00Z")
    ready = cond(lost, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ReducedCapacity")
    assert "1/2 pods available" in ready["message"]
    assert cond(lost, "Degraded")["status"] == "False"
    # The transition is told once, as a Normal Event (traffic is served).
    assert [(e.type, e.reason) for e in lost.events] == [("Normal", "ReducedCapacity")]

    b, none = _serving(2, 0)
    b["status"] = lost.status
    down = decide(b, none, CONFIG, "2026-01-01T00:03:00Z")
    assert cond(down, "Ready")["status"] == "False"
    assert (cond(down, "Degraded")["status"], cond(down, "Degraded")["reason"]) == (
        "True",
        "Unavailable",
    )


FULL = {"ok": False, "category": "storage", "reason": "StorageFull", "message": "volume full"}


def _failed_on_storage(failed_at: str) -> Observed:
    return Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), failed=True, failed_at=failed_at)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Failed", json.dumps(FULL))]},
    )


def test_a_full_claim_is_named_and_retried_after_a_wait_that_grows() -> None:
    first = decide(
        body(), __import__("trtops_operator.reconcile").reconcile.Observed(), CONFIG, NOW
    )
    # Built went False at NOW (the build started); the Job failed 10 s later.
    b = body(first.status)
    d = decide(b, _failed_on_storage("2026-01-01T00:00:10Z"), CONFIG, "2026-01-01T00:00:11Z")
    built = cond(d, "Built")
    assert (built["status"], built["reason"]) == ("False", "StorageFull")
    assert "retried at 2026-01-01T00:00:40Z" in built["message"]  # the 30 s floor
    assert d.delete == []
    assert d.requeue_after == 29
    # Due: the failed Job is deleted, so that the next reconcile creates it again.
    due = decide(
        body(d.status), _failed_on_storage("2026-01-01T00:00:10Z"), CONFIG, "2026-01-01T00:00:40Z"
    )
    assert due.delete == [("Job", job_name())]
    # The fault lasts: the next failure, 100 s into it, waits 100 s.
    later = decide(
        body(d.status), _failed_on_storage("2026-01-01T00:01:40Z"), CONFIG, "2026-01-01T00:01:41Z"
    )
    assert "retried at 2026-01-01T00:03:20Z" in cond(later, "Built")["message"]
    assert later.delete == []
    # ... and never more than 10 min, however long it lasts.
    late = decide(
        body(d.status), _failed_on_storage("2026-01-01T05:00:00Z"), CONFIG, "2026-01-01T05:00:01Z"
    )
    assert "retried at 2026-01-01T05:10:00Z" in cond(late, "Built")["message"]


def test_other_failures_are_not_retried_by_themselves() -> None:
    gate = {**FULL, "category": "accuracy", "reason": "AccuracyGateFailed"}
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), failed=True, failed_at=NOW)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Failed", json.dumps(gate))]},
    )
    d = decide(body(), obs, CONFIG, "2026-01-02T00:00:00Z")
    assert d.delete == []
    assert d.requeue_after is None


def test_an_older_copy_than_our_own_write_is_never_acted_on() -> None:
    writes = LastWrites()
    cached = {"metadata": {"resourceVersion": "41"}, "status": {"canary": {"paused": False}}}
    written = {"metadata": {"resourceVersion": "42"}, "status": {"canary": {"paused": True}}}
    writes.record("k", written)
    assert writes.freshest("k", cached) is written  # the watch has not brought it back yet
    # Our own write passed back in (a later step of the same pass) keeps it for the next pass.
    assert writes.freshest("k", written) is written
    assert writes.freshest("k", cached) is written
    newer = {"metadata": {"resourceVersion": "57"}, "status": {}}
    assert writes.freshest("k", newer) is newer  # someone changed it since: theirs is newer


def test_a_job_created_by_an_earlier_reconcile_is_not_told_again() -> None:
    from trtops_operator import k8s

    first = decide(body(), Observed(), CONFIG, NOW)
    posted: list[str] = []

    class Api:
        def create_job(self, job: dict[str, Any]) -> bool:
            return False  # 409: it exists

        def patch_status(self, *_: Any) -> dict[str, Any]:
            return {}

        def post_event(self, _: Any, event: Any) -> None:
            posted.append(event.reason)

    # A stale reconcile that still sees no Job, but already sees its own Building status.
    again = decide(body(first.status), Observed(), CONFIG, NOW)
    assert [e.reason for e in again.events] == ["BuildStarted"]
    created, _ = k8s.apply_decision(Api(), body(first.status), again)  # type: ignore[arg-type]
    assert (created, posted) == ([], [])
