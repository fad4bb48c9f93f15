"""Scheduled rebuilds, pure: the regression gate's rule, when the schedule is due, and the pass
by pass flow (an operator restarted in the middle resumes from status alone)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError
from trtops_operator import keys
from trtops_operator.config import OperatorConfig
from trtops_operator.models import RegressionGate, TrtEngineSpec
from trtops_operator.rebuild import latest_due
from trtops_operator.reconcile import JobObs, Observed, PodObs, decide
from trtops_operator.regression import judge, recorded_comparison

GATE = RegressionGate()  # maxLatencyRatio 1.1, maxAccuracyDrop 0.005


def _cmp(
    p50: tuple[float, float] = (1.0, 1.0), top1: tuple[float, float] = (0.99, 0.99)
) -> dict[str, Any]:
    """A build Job's comparison: (candidate, serving) p50 at batch 8 and top-1 agreement."""
    return {
        "batches": [{"batchSize": 8, "candidateP50Ms": p50[0], "servingP50Ms": p50[1]}],
        "outputs": {
            "logits": {
                "candidate": {"top1Agreement": top1[0], "cosineSimilarity": 0.999},
                "serving": {"top1Agreement": top1[1], "cosineSimilarity": 0.999},
            }
        },
    }


@pytest.mark.parametrize(
    ("comparison", "not_worse", "reason", "words"),
    [
        (_cmp(), True, "NotWorse", "p50 x1.00..x1.00"),
        (_cmp(p50=(1.09, 1.0)), True, "NotWorse", "x1.09"),  # within the ratio
        (_cmp(p50=(0.5, 1.0), top1=(0.986, 0.99)), True, "NotWorse", "drop at most 0.0040"),
        (
            _cmp(p50=(1.2, 1.0)),
            False,
            "Slower",
            "p50 at batch 8 1.200 ms vs serving 1.000 ms (x1.20 > maxLatencyRatio 1.1)",
        ),
        (
            _cmp(p50=(0.5, 1.0), top1=(0.91, 0.99)),
            False,
            "LessAccurate",
            "logits top-1 agreement 0.9100 vs serving 0.9900 (drop 0.0800 > maxAccuracyDrop",
        ),
        ({"batches": [], "outputs": {}}, False, "NotCompared", "no figure to compare"),
        (None, False, "NotCompared", "the build reported no comparison"),
    ],
)
def test_the_gate_passes_only_a_plan_not_worse(
    comparison: dict[str, Any] | None, not_worse: bool, reason: str, words: str
) -> None:
    verdict = judge(comparison, GATE, "H100")
    assert (verdict.not_worse, verdict.reason) == (not_worse, reason)
    assert words in verdict.message
    assert verdict.message.startswith("H100: ")


def test_a_serving_plan_that_cannot_run_is_judged_on_recorded_figures() -> None:
    candidate = {
        "benchmark": {"batches": [{"batchSize": 1, "p50Ms": 2.0}, {"batchSize": 8, "p50Ms": 9}]},
        "accuracy": {"outputs": {"logits": {"top1Agreement": 0.99, "cosineSimilarity": 0.999}}},
    }
    serving = {
        "benchmark": {"batches": [{"batchSize": 1, "p50Ms": 1.0}]},
        "accuracy": {"outputs": {"logits": {"top1Agreement": 0.99, "cosineSimilarity": 0.999}}},
    }
    error = {"error": "PlanIncompatible: built by TensorRT 10.3"}
    verdict = judge(error, GATE, "H100", recorded_comparison(candidate, serving))
    assert (verdict.not_worse, verdict.reason) == (False, "Slower")
    assert "p50 at batch 1 2.000 ms vs serving 1.000 ms" in verdict.message
    assert "figures recorded at build: PlanIncompatible: built by TensorRT 10.3" in verdict.message
    assert judge(error, GATE, "H100").reason == "NotCompared"


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_the_schedule_fires_once_per_due_time_and_catches_up_once() -> None:
    daily = "0 3 * * *"
    assert latest_due(daily, _t("2026-12-01T00:10:00Z"), _t("2026-12-01T02:59:59Z")) is None
    assert latest_due(daily, _t("2026-12-01T00:10:00Z"), _t("2026-12-01T03:00:00Z")) == _t(
        "2026-12-01T03:00:00Z"
    )
    # down for three days: one rebuild, for the latest time missed
    assert latest_due(daily, _t("2026-12-01T03:00:00Z"), _t("2026-12-04T05:00:00Z")) == _t(
        "2026-12-04T03:00:00Z"
    )
    # handled already: not again
    assert latest_due(daily, _t("2026-12-04T03:00:00Z"), _t("2026-12-04T05:00:00Z")) is None


def test_a_cron_field_out_of_range_is_refused_by_the_model() -> None:
    """The model refuses values out of range with the ranges, as the CRD's rule does (a spec
    admitted by an older CRD is reported InvalidSpec in status)."""
    spec = {"model": {"uri": "m.onnx"}, "storage": {"claimName": "c"}}
    spec["build"] = {"targets": [{"gpuProduct": "H100"}], "schedule": "99 3 * * *"}
    with pytest.raises(ValidationError, match="minute 0-59"):
        TrtEngineSpec.model_validate(spec)


# --- the flow, pass by pass, through the whole pure reconcile ------------------------------

CONFIG = OperatorConfig(worker_image="w:1")
SPEC = {
    "model": {"uri": "m.onnx"},
    "build": {"targets": [{"gpuProduct": "H100"}], "schedule": "0 3 * * *"},
    "storage": {"claimName": "c"},
}
SERVING_PLAN = {
    "target": "H100",
    "key": "",
    "job": "",
    "path": "/plans/serving",
    "artifactKey": "a" * 64,
    "precision": "fp16",
    "backend": "tensorrt",
}


def _status(revision: str, job: str, **rebuild: Any) -> dict[str, Any]:
    plan = {**SERVING_PLAN, "key": "k", "job": job}
    built = {"type": "Built", "status": "True", "reason": "Built", "message": ""}
    status: dict[str, Any] = {
        "revision": revision,
        "conditions": [built],
        "plans": [plan],
        "stable": {"revision": revision, "weight": 100, "plans": [plan]},
    }
    if rebuild:
        status["rebuild"] = rebuild
    return status


def _body(status: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1}
    return {"metadata": meta, "spec": SPEC, "status": status}


def _job(rebuild: str | None) -> str:
    spec = TrtEngineSpec.model_validate(SPEC)
    key = keys.build_key(spec, "H100", CONFIG.worker_image, rebuild=rebuild)
    return keys.job_name(key, "c", None)


def _done(
    job: str, comparison: dict[str, Any], artifact_key: str = "b" * 64, **extra: Any
) -> Observed:
    result = {
        "ok": True, "key": artifact_key, "path": f"/plans/{artifact_key}", "sha256": "s" * 64,
        "precision": "fp16", "backend": "tensorrt", "comparison": comparison, **extra,
    }  # fmt: skip
    return Observed(
        jobs={job: JobObs(job, ("u1",), ("e",), succeeded=True)},
        pods={job: [PodObs("p", job, "2026-12-01T03:00:01Z", "Succeeded", json.dumps(result))]},
    )


def _serving_observed(job: str) -> Observed:
    """The serving revision's own Job, done (what the indexes hold in steady state)."""
    result = {
        "ok": True, "key": "a" * 64, "path": "/plans/serving", "sha256": "s" * 64,
        "precision": "fp16", "backend": "tensorrt",
    }  # fmt: skip
    return Observed(
        jobs={job: JobObs(job, ("u1",), ("e",), succeeded=True)},
        pods={job: [PodObs("p0", job, "2026-11-30T00:00:00Z", "Succeeded", json.dumps(result))]},
    )


def _merge(*observed: Observed) -> Observed:
    return Observed(
        jobs={k: v for o in observed for k, v in o.jobs.items()},
        pods={k: v for o in observed for k, v in o.pods.items()},
    )


def _rebuilt(d: Any) -> dict[str, Any]:
    return next(c for c in d.status["conditions"] if c["type"] == "Rebuilt")


def _revision() -> str:
    spec = TrtEngineSpec.model_validate(SPEC)
    return keys.revision_of([keys.build_key(spec, "H100", CONFIG.worker_image)])


def test_a_worse_rebuild_is_refused_across_a_restart_and_the_serving_plan_stays() -> None:
    revision, serving_job = _revision(), _job(None)
    steady = _serving_observed(serving_job)

    # 00:10: the schedule is first seen; nothing is built, the next time is said
    d = decide(_body(_status(revision, serving_job)), steady, CONFIG, "2026-12-01T00:10:00Z")
    assert not d.create
    assert d.status["rebuild"]["lastScheduleTime"] == "2026-12-01T00:10:00Z"
    assert d.status["rebuild"]["nextScheduleTime"] == "2026-12-01T03:00:00Z"
    assert (_rebuilt(d)["status"], _rebuilt(d)["reason"]) == ("Unknown", "Scheduled")
    assert d.requeue_after == pytest.approx(2 * 3600 + 50 * 60)
    status = {**_status(revision, serving_job), "rebuild": d.status["rebuild"]}

    # 03:00:05: due; one Job for the rebuild, measuring against the serving plan
    d = decide(_body(status), steady, CONFIG, "2026-12-01T03:00:05Z")
    fired = "2026-12-01T03:00:00Z"
    assert [j["metadata"]["name"] for j in d.create] == [_job(fired)]
    args = d.create[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--baseline") + 1] == "/plans/serving"
    assert d.status["rebuild"]["candidate"] == fired
    assert d.status["revision"] == revision  # the serving revision does not move
    assert d.waiting_on[-1] == _job(fired)
    status = {**status, "rebuild": d.status["rebuild"], "conditions": d.status["conditions"]}

    # an operator restarted while the Job runs: status alone says where it was
    running = Observed(
        jobs={**steady.jobs, _job(fired): JobObs(_job(fired), ("u1",), ("e",))},
        pods=steady.pods,
    )
    d = decide(_body(status), running, CONFIG, "2026-12-01T03:02:00Z")
    assert not d.create
    assert (_rebuilt(d)["status"], _rebuilt(d)["reason"]) == ("Unknown", "Rebuilding")
    status = {**status, "rebuild": d.status["rebuild"], "conditions": d.status["conditions"]}

    # the Job measured the new plan 30 % slower: refused, with the numbers
    worse = _merge(steady, _done(_job(fired), _cmp(p50=(1.3, 1.0))))
    d = decide(_body(status), worse, CONFIG, "2026-12-01T03:05:00Z")
    cond = _rebuilt(d)
    assert (cond["status"], cond["reason"]) == ("False", "Regressed")
    assert "refused (Slower), the serving plans stay" in cond["message"]
    assert "1.300 ms vs serving 1.000 ms (x1.30 > maxLatencyRatio 1.1)" in cond["message"]
    assert [e.reason for e in d.events if e.reason == "RebuildRefused"] == ["RebuildRefused"]
    assert d.status["revision"] == revision
    assert "current" not in d.status["rebuild"]
    assert d.status["rebuild"]["lastResult"]["verdict"] == "Refused"
    # cleared in the merge patch (a key left out would stay as it was on the server)
    assert "candidate" in d.status["rebuild"]
    assert d.status["rebuild"]["candidate"] is None
    assert d.status["rebuild"]["nextScheduleTime"] == "2026-12-02T03:00:00Z"
    assert not d.create


def test_a_rebuild_not_worse_becomes_the_revision_the_canary_rolls_out() -> None:
    revision, serving_job = _revision(), _job(None)
    fired = "2026-12-01T03:00:00Z"
    rebuild = {"lastScheduleTime": fired, "candidate": fired}
    status = _status(revision, serving_job, **rebuild)
    sampled = {"calibration": "request sample: 64 of 64 rows from 2 file(s)"}
    better = _merge(
        _serving_observed(serving_job),
        _done(_job(fired), _cmp(p50=(0.8, 1.0)), dataSources=sampled),
    )
    d = decide(_body(status), better, CONFIG, "2026-12-01T03:05:00Z")
    cond = _rebuilt(d)
    assert (cond["status"], cond["reason"]) == ("True", "NotWorse")
    assert "p50 x0.80..x0.80 of serving's" in cond["message"]
    assert "(calibration: request sample: 64 of 64 rows from 2 file(s))" in cond["message"]
    assert d.status["rebuild"]["current"] == fired
    new_revision = d.status["revision"]
    assert new_revision != revision  # the accepted plans are the revision the spec asks for
    assert d.status["plans"][0]["artifactKey"] == "b" * 64
    deployments = [o for o in d.apply if o["kind"] == "Deployment"]
    revisions = {o["metadata"]["labels"]["trtops.dev/revision"] for o in deployments}
    assert new_revision in revisions  # its Deployment is applied: the rollout begins

    # the next pass keeps the accepted rebuild's keys (no new Job, same revision)
    status = {**d.status, "stable": status["stable"]}
    d2 = decide(_body(status), better, CONFIG, "2026-12-01T03:05:30Z")
    assert (d2.status or status)["revision"] == new_revision
    assert not d2.create


def test_a_rebuild_giving_the_same_plan_changes_nothing() -> None:
    revision, serving_job = _revision(), _job(None)
    fired = "2026-12-01T03:00:00Z"
    status = _status(revision, serving_job, lastScheduleTime=fired, candidate=fired)
    same = _merge(_serving_observed(serving_job), _done(_job(fired), _cmp(), "a" * 64))
    d = decide(_body(status), same, CONFIG, "2026-12-01T03:05:00Z")
    assert (_rebuilt(d)["status"], _rebuilt(d)["reason"]) == ("True", "Unchanged")
    assert d.status["revision"] == revision
    assert "current" not in d.status["rebuild"]


def test_a_due_rebuild_waits_while_a_canary_is_in_flight() -> None:
    revision, serving_job = _revision(), _job(None)
    status = _status(revision, serving_job, lastScheduleTime="2026-12-01T00:10:00Z")
    status["stable"] = {**status["stable"], "revision": "older"}  # a rollout is going on
    d = decide(_body(status), _serving_observed(serving_job), CONFIG, "2026-12-01T03:00:05Z")
    assert not [j for j in d.create if "--baseline" in json.dumps(j)]
    assert d.status["rebuild"]["lastScheduleTime"] == "2026-12-01T00:10:00Z"  # still due
    assert "waiting: a rollout is in progress" in _rebuilt(d)["message"]
