"""The pure reconcile: given a resource and what exists, what the operator does and reports."""

from __future__ import annotations

import json
from typing import Any

from trtops_operator import keys
from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec
from trtops_operator.reconcile import (
    BuildOutcome,
    DeploymentObs,
    JobObs,
    Observed,
    PodObs,
    decide,
)
from trtops_operator.results import BuildFailure, parse_result

CONFIG = OperatorConfig(worker_image="w:1")
NOW = "2026-01-01T00:00:00Z"
SPEC = {
    "model": {"uri": "m.onnx"},
    "build": {"targets": [{"gpuProduct": "H100"}]},
    "storage": {"claimName": "c"},
}
RESULT = {
    "ok": True,
    "key": "k" * 64,
    "path": "/plans/kkk",
    "sha256": "s" * 64,
    "precision": "fp16",
}


def body(status: dict[str, Any] | None = None, uid: str = "u1") -> dict[str, Any]:
    return {
        "metadata": {"name": "e", "namespace": "ns", "uid": uid, "generation": 1},
        "spec": SPEC,
        "status": status or {},
    }


def job_name() -> str:
    spec = TrtEngineSpec.model_validate(SPEC)
    return keys.job_name(keys.build_key(spec, "H100", CONFIG.worker_image), "c", None)


def cond(d: Any, type_: str) -> dict[str, Any]:
    return next(c for c in d.status["conditions"] if c["type"] == type_)


def test_first_reconcile_creates_one_job_and_reports_building() -> None:
    d = decide(body(), Observed(), CONFIG, NOW)
    assert [j["metadata"]["name"] for j in d.create] == [job_name()]
    assert cond(d, "Built")["reason"] == "Building"
    assert cond(d, "Ready")["status"] == "False"
    assert not d.apply


def test_plan_recorded_by_another_engine_is_reused_without_a_job() -> None:
    known = {
        job_name(): {
            "target": "H100",
            "key": "x",
            "job": job_name(),
            "path": "/plans/p",
            "sha256": "s",
        }
    }
    d = decide(body(uid="u2"), Observed(known_plans=known), CONFIG, NOW)
    assert not d.create
    assert d.outcomes == [BuildOutcome("reused", job_name(), "fp16", "H100")]
    assert d.status["plans"][0]["reused"] is True
    assert [o["kind"] for o in d.apply] == ["Deployment", "Service", "NetworkPolicy"]


def test_result_in_termination_message_becomes_a_plan_and_a_deployment() -> None:
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), succeeded=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Succeeded", json.dumps(RESULT))]},
    )
    d = decide(body(), obs, CONFIG, NOW)
    assert d.status["plans"][0]["sha256"] == "s" * 64
    assert d.outcomes == [BuildOutcome("succeeded", job_name(), "fp16", "H100")]
    dep = next(o for o in d.apply if o["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--artifact-dir") + 1] == "/plans/kkk"


def test_a_job_of_someone_else_is_adopted_not_recreated() -> None:
    obs = Observed(jobs={job_name(): JobObs(job_name(), ("other",))})
    d = decide(body(), obs, CONFIG, NOW)
    assert d.adopt == [job_name()]
    assert not d.create


def test_worker_failure_sets_built_false_with_its_reason_and_a_warning() -> None:
    fail = {
        "ok": False,
        "category": "accuracy",
        "reason": "AccuracyGateFailed",
        "message": "0.9 < 0.99",
    }
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), failed=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Failed", json.dumps(fail))]},
    )
    d = decide(body(), obs, CONFIG, NOW)
    assert cond(d, "Built")["reason"] == "AccuracyGateFailed"
    assert "0.9 < 0.99" in cond(d, "Built")["message"]
    assert any(e.type == "Warning" and e.reason == "AccuracyGateFailed" for e in d.events)
    assert d.outcomes == [BuildOutcome("failed", job_name(), "fp16", "H100")]


def test_steady_state_writes_nothing() -> None:
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), succeeded=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Succeeded", json.dumps(RESULT))]},
    )
    first = decide(body(), obs, CONFIG, NOW)
    dep = next(o for o in first.apply if o["kind"] == "Deployment")
    svc = next(o for o in first.apply if o["kind"] == "Service")
    policy = next(o for o in first.apply if o["kind"] == "NetworkPolicy")
    h = "trtops.dev/spec-hash"
    obs2 = Observed(
        deployments={
            dep["metadata"]["name"]: DeploymentObs(
                dep["metadata"]["name"], "e", dep["metadata"]["annotations"][h], 1, 1, 1, 1, 1, 1
            )
        },
        services={"e": svc["metadata"]["annotations"][h]},
        network_policies={"e": policy["metadata"]["annotations"][h]},
    )
    second = decide(body(first.status), obs2, CONFIG, "2026-01-01T00:05:00Z")
    assert cond(second, "Ready")["status"] == "True"
    third = decide(body(second.status), obs2, CONFIG, "2026-01-01T00:10:00Z")
    assert third.status is None
    assert not third.apply
    assert not third.create
    assert not third.events


def test_crashed_worker_log_tail_is_reported_as_crash() -> None:
    r = parse_result("Traceback ...\nMemoryError")
    assert isinstance(r, BuildFailure)
    assert r.reason == "WorkerCrashed"
    assert "MemoryError" in r.message
    assert parse_result(None) is None


def test_a_toleration_change_rolls_serving_without_a_build_or_new_revision() -> None:
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), succeeded=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Succeeded", json.dumps(RESULT))]},
    )
    first = decide(body(), obs, CONFIG, NOW)
    dep = next(o for o in first.apply if o["kind"] == "Deployment")
    h = "trtops.dev/spec-hash"
    running = Observed(
        jobs=obs.jobs,
        pods=obs.pods,
        deployments={
            dep["metadata"]["name"]: DeploymentObs(
                dep["metadata"]["name"], "e", dep["metadata"]["annotations"][h], 1, 1, 1, 1, 1, 1
            )
        },
    )
    taint = {"key": "dedicated", "value": "ml-gpu", "effect": "NoSchedule"}
    changed = body(first.status)
    changed["spec"] = {
        **SPEC,
        "build": {**SPEC["build"], "tolerations": [taint]},
        "serving": {"tolerations": [taint]},
    }
    d = decide(changed, running, CONFIG, "2026-01-01T00:05:00Z")
    assert not d.create  # the build Job's name, hence the plan, does not depend on tolerations
    [rolled] = [o for o in d.apply if o["kind"] == "Deployment"]
    assert rolled["metadata"]["name"] == dep["metadata"]["name"]  # same revision, same Deployment
    assert not d.delete
    assert taint in rolled["spec"]["template"]["spec"]["tolerations"]
