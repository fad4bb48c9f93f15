"""Experiments, pure: the figures, significance and recommendation from measured samples, and
the reconcile of ``spec.experiment`` (variant builds, Deployments, route weights, status) from
what exists. No cluster: the samples are histograms as Prometheus' ``increase()`` returns."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
from trtops_operator import indexes, keys
from trtops_operator.canary.samples import AgreementSample, RevisionSample
from trtops_operator.config import OperatorConfig
from trtops_operator.experiment.judge import ArmSample, judge_arms, recommend
from trtops_operator.experiment.measurement import Measured
from trtops_operator.models import RecommendRule, TrtEngineSpec
from trtops_operator.reconcile import DeploymentObs, JobObs, Observed, PodObs, decide

BOUNDS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.05, 0.1, float("inf"))


def sample(median_ms: float, n: int = 600, errors: int = 0, seed: int = 0) -> RevisionSample:
    """``n`` successes around ``median_ms`` (lognormal, 20 % spread), ``errors`` 5xx, 60 s."""
    lat = np.random.default_rng(seed).lognormal(np.log(median_ms / 1000), 0.2, n)
    buckets = {str(b): float((lat <= b).sum()) for b in BOUNDS}
    buckets["+Inf"] = buckets.pop("inf")
    return RevisionSample.from_vectors(
        {"success": float(n), "server_error": float(errors)}, buckets, 60.0
    )


def agreement(cosine: float, top1: float, rows: int = 200) -> AgreementSample:
    return AgreementSample(
        rows={"logits": rows},
        cosine_sum={"logits": cosine * rows},
        top1_compared={"logits": rows},
        top1_agreed={"logits": top1 * rows},
    )


def arm(name: str, precision: str, median: float, **kw: Any) -> ArmSample:
    """An arm of 600 requests around ``median`` ms; ``errors``/``seed`` shape its sample."""
    errors, seed = kw.pop("errors", 0), kw.pop("seed", sum(map(ord, name)))
    return ArmSample(
        name, precision, f"r-{name}", 30, sample(median, errors=errors, seed=seed), **kw
    )


RULE = RecommendRule.model_validate(
    {"minOutputAgreement": {"cosine": 0.99, "top1": 0.98}, "errorRateNotWorse": True}
)


def test_the_fastest_variant_that_agrees_is_recommended_not_the_fastest_overall() -> None:
    base = arm("baseline", "fp32", 10.0)
    fp16 = arm("fp16", "fp16", 5.0, agreement=agreement(0.9999, 1.0))
    int8 = arm("int8", "int8", 3.0, agreement=agreement(0.80, 0.62))  # faster, but wrong
    results = judge_arms(base, [fp16, int8], RULE, min_shadow=50)
    by = {r.arm.name: r for r in results}
    assert by["fp16"].latency == by["int8"].latency == "faster"
    assert by["fp16"].latency_upper is not None
    assert by["fp16"].latency_upper < 1
    assert by["fp16"].eligible
    assert not by["int8"].eligible
    assert any("cosine 0.8000 < minOutputAgreement.cosine 0.99" in n for n in by["int8"].notes)
    rec = recommend(results, RULE)
    assert (rec.name, rec.precision, rec.variant) == ("fp16", "fp16", True)
    assert "significantly faster" in rec.reason
    # what status keeps: p50 < p95 < p99, the agreement, and "not reported" GPU figures
    row = by["fp16"].to_json()
    assert row["p50Ms"] < row["p95Ms"] <= row["p99Ms"]
    assert row["outputAgreement"] == {"cosine": 0.9999, "top1": 1.0, "rows": 200}
    assert "gpuMemoryMiB" not in row


def test_a_variant_as_fast_as_the_baseline_is_not_recommended() -> None:
    base = arm("baseline", "fp32", 10.0, seed=7)
    same = arm("fp16", "fp16", 10.0, agreement=agreement(1.0, 1.0), seed=7)  # the same requests
    results = judge_arms(base, [same], RULE, min_shadow=50)
    assert results[1].latency == "no significant difference"
    rec = recommend(results, RULE)
    assert not rec.variant
    assert rec.precision == "fp32"
    assert "none is significantly faster" in rec.reason


def test_significantly_more_errors_rule_a_variant_out() -> None:
    base = arm("baseline", "fp32", 10.0)
    flaky = arm("fp16", "fp16", 5.0, agreement=agreement(1.0, 1.0), errors=60)
    results = judge_arms(base, [flaky], RULE, min_shadow=50)
    assert results[1].error_worse
    assert results[1].error_p_value is not None
    assert results[1].error_p_value < 0.05
    rec = recommend(results, RULE)
    assert not rec.variant
    assert "significantly above the baseline's" in rec.reason


def test_too_few_shadow_rows_is_not_agreement() -> None:
    base = arm("baseline", "fp32", 10.0)
    fp16 = arm("fp16", "fp16", 5.0, agreement=agreement(1.0, 1.0, rows=10))
    results = judge_arms(base, [fp16], RULE, min_shadow=50)
    assert not results[1].eligible
    assert "10 shadow rows compared, fewer than minShadowSamples 50" in results[1].notes[0]


def test_cheapest_objective_ranks_by_the_cost_of_busy_pods() -> None:
    rule = RecommendRule.model_validate({"objective": "cheapest"})
    base = arm("baseline", "fp32", 10.0, pod_hourly_cost=2.0)
    a = arm("fp16", "fp16", 9.0, agreement=agreement(1, 1), pod_hourly_cost=2.0)
    b = arm("int8", "int8", 9.5, agreement=agreement(1, 1), pod_hourly_cost=1.0)  # fewer cores
    results = judge_arms(base, [a, b], rule, 50)
    # 2.0 per pod-hour at ~10 ms a request: 2.0 * 0.010 / 3600 * 1e6 ~ 5.6 per 1M
    assert results[0].busy_cost_per_million is not None
    assert 4.0 < results[0].busy_cost_per_million < 7.0
    rec = recommend(results, rule)
    assert rec.name == "int8"
    assert "per 1M" in rec.reason


def test_cheapest_without_prices_says_so() -> None:
    rule = RecommendRule.model_validate({"objective": "cheapest"})
    base = arm("baseline", "fp32", 10.0)
    int8 = arm("int8", "int8", 5.0, agreement=agreement(1, 1))
    rec = recommend(judge_arms(base, [int8], rule, 50), rule)
    assert rec.name == "baseline"
    assert "objective cheapest needs prices, and none are set (spec.cost" in rec.reason


# --- the reconcile of spec.experiment ---------------------------------------------------------

CONFIG = OperatorConfig(worker_image="w:1")
SPEC: dict[str, Any] = {
    "model": {"uri": "m.onnx"},
    "build": {"precision": "fp32", "calibration": {"uri": "c.npz"}},
    "storage": {"claimName": "c"},
    "serving": {"backend": "onnxruntime"},
    "rollout": {"trafficRouter": {"gatewayAPI": {"httpRoute": "route"}}},
    "experiment": {
        "variants": [
            {"name": "fp16", "precision": "fp16", "weight": 30},
            {"name": "int8", "precision": "int8", "weight": 30},
        ],
        "minRequests": 500,
        "prometheus": {"address": "http://prom:9090"},
        "recommend": {"minOutputAgreement": {"cosine": 0.99}},
        "hardSlo": {"maxErrorRate": 0.5},
    },
}


def _job(precision: str) -> tuple[str, str]:
    spec = TrtEngineSpec.model_validate(SPEC)
    spec = spec.model_copy(update={"build": spec.build.model_copy(update={"precision": precision})})
    key = keys.build_key(spec, None, CONFIG.worker_image)
    return key, keys.job_name(key, "c", None)


def _settled_body() -> dict[str, Any]:
    key, job = _job("fp32")
    plan = {
        "target": "cpu",
        "key": key,
        "job": job,
        "path": "/plans/b",
        "precision": "fp32",
        "backend": "onnxruntime",
    }
    rev = keys.revision_of([key])
    return {
        "metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": copy.deepcopy(SPEC),
        "status": {
            "revision": rev,
            "plans": [plan],
            "stable": {"revision": rev, "weight": 100, "plans": [plan]},
        },
    }


def _exists(d: Any, obs: Observed, available: int = 1) -> Observed:
    """What the API server would hold after ``d`` was applied (every Deployment rolled out)."""
    deps = dict(obs.deployments)
    svcs = dict(obs.services)
    for o in d.apply:
        h = (
            o["metadata"]["annotations"]["trtops.dev/spec-hash"]
            if "annotations" in o["metadata"]
            else ""
        )
        if o["kind"] == "Deployment":
            r = o["spec"]["replicas"]
            deps[o["metadata"]["name"]] = DeploymentObs(
                o["metadata"]["name"], "e", h, 1, 1, r, r, r, available
            )
        elif o["kind"] == "Service":
            svcs[o["metadata"]["name"]] = h
    for kind, name in d.delete:
        (deps if kind == "Deployment" else svcs).pop(name, None)
    return Observed(jobs=obs.jobs, pods=obs.pods, deployments=deps, services=svcs)


def _apply_status(body: dict[str, Any], d: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for k, v in (d.status or {}).items():
        if v is None:
            body["status"].pop(k, None)
        else:
            body["status"][k] = v
    return body


def test_an_experiment_builds_serves_weighs_measures_and_recommends() -> None:
    body = _settled_body()
    # 1. the baseline serves: one build Job per variant, none for the baseline
    d = decide(body, Observed(), CONFIG, "2026-01-01T00:00:00Z")
    obs = _exists(d, Observed())
    d = decide(body, obs, CONFIG, "2026-01-01T00:00:01Z")
    created = sorted(j["metadata"]["name"] for j in d.create)
    assert created == sorted(_job(p)[1] for p in ("fp16", "int8"))
    assert _job("fp32")[1] not in created
    body = _apply_status(body, d)
    assert body["status"]["experiment"]["phase"] == "Building"
    # 2. the variant builds succeed: Deployments and Services, but no traffic before they serve
    jobs, pods = {}, {}
    for p in ("fp16", "int8"):
        key, job = _job(p)
        jobs[job] = JobObs(job, ("u1",), succeeded=True)
        result = {
            "ok": True,
            "key": key,
            "path": f"/plans/{p}",
            "sha256": "s" * 64,
            "precision": p,
            "backend": "onnxruntime",
        }
        pods[job] = [PodObs("p", job, "t", "Succeeded", json.dumps(result))]
    obs = Observed(jobs=jobs, pods=pods, deployments=obs.deployments, services=obs.services)
    d = decide(body, obs, CONFIG, "2026-01-01T00:01:00Z")
    body = _apply_status(body, d)
    exp = body["status"]["experiment"]
    assert exp["phase"] == "Starting"
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in d.apply)
    assert ("Service", "e-x-fp16") in kinds
    assert ("Service", "e-experiment") in kinds
    variant_deps = [o for o in d.apply if o["kind"] == "Deployment"]
    assert len(variant_deps) == 2
    for dep in variant_deps:
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--shadow-url" not in args  # only the baseline shadows
        assert (
            dep["spec"]["template"]["metadata"]["labels"]["trtops.dev/experiment-variant"] == "true"
        )
    assert d.router is not None
    assert d.router.desired == {"e": 100}
    obs = _exists(d, obs, available=0)
    # 3. they serve: fixed weights on the route
    obs = _exists(d, obs, available=1)
    d = decide(body, obs, CONFIG, "2026-01-01T00:01:05Z")
    body = _apply_status(body, d)
    exp = body["status"]["experiment"]
    assert exp["phase"] == "Running"
    assert exp["startedAt"] == "2026-01-01T00:01:05Z"
    assert d.router.desired == {"e": 40, "e-x-fp16": 30, "e-x-int8": 30}
    assert any(e.reason == "ExperimentStarted" for e in d.events)
    # the baseline's pods shadow to the variants' Service
    baseline = next(
        o
        for o in _exists_all(body, obs)
        if o["metadata"]["name"].startswith(f"e-{body['status']['revision']}")
    )
    args = baseline["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--shadow-url") + 1].startswith("http://e-experiment.ns.svc:")
    # 4. a measurement below minRequests: results, still Running; int8 breaches the hard SLO
    revs = {v["name"]: v["revision"] for v in exp["variants"]}
    measured = Measured(
        "2026-01-01T00:02:00Z",
        exp["key"],
        (
            ArmSample("baseline", "fp32", exp["baseline"]["revision"], 40, sample(10, n=300)),
            ArmSample("fp16", "fp16", revs["fp16"], 30, sample(5, n=200), agreement(0.9999, 1.0)),
            ArmSample(
                "int8", "int8", revs["int8"], 30, sample(3, n=100, errors=200), agreement(0.9, 0.8)
            ),
        ),
    )
    d = decide(body, obs, CONFIG, "2026-01-01T00:02:00Z", measured=measured)
    body = _apply_status(body, d)
    exp = body["status"]["experiment"]
    assert exp["phase"] == "Running"
    assert [r["name"] for r in exp["results"]] == ["baseline", "fp16", "int8"]
    stopped = next(v for v in exp["variants"] if v["name"] == "int8")
    assert "hardSlo.maxErrorRate 0.5" in stopped["stopped"]
    assert d.router.desired == {"e": 70, "e-x-fp16": 30}  # nothing else moved
    assert any(e.reason == "ExperimentVariantStopped" for e in d.events)
    # 4b. minRequests reached but too few shadow rows for the rule: it runs on
    few_rows = Measured(
        "2026-01-01T00:03:00Z",
        exp["key"],
        (
            ArmSample("baseline", "fp32", exp["baseline"]["revision"], 70, sample(10, n=900)),
            ArmSample("fp16", "fp16", revs["fp16"], 30, sample(5, n=600), agreement(1.0, 1.0, 10)),
            ArmSample("int8", "int8", revs["int8"], 0, sample(3, n=100, errors=200)),
        ),
    )
    held = decide(body, obs, CONFIG, "2026-01-01T00:03:00Z", measured=few_rows)
    assert held.status["experiment"]["phase"] == "Running"
    # 5. every serving arm reached minRequests: Completed, recommended, variants gone
    measured = Measured(
        "2026-01-01T00:05:00Z",
        exp["key"],
        (
            ArmSample("baseline", "fp32", exp["baseline"]["revision"], 70, sample(10, n=900)),
            ArmSample("fp16", "fp16", revs["fp16"], 30, sample(5, n=600), agreement(0.9999, 1.0)),
            ArmSample(
                "int8", "int8", revs["int8"], 0, sample(3, n=100, errors=200), agreement(0.9, 0.8)
            ),
        ),
    )
    d = decide(body, obs, CONFIG, "2026-01-01T00:05:00Z", measured=measured)
    body = _apply_status(body, d)
    exp = body["status"]["experiment"]
    assert exp["phase"] == "Completed"
    assert exp["recommendation"]["variant"] == "fp16"
    assert (
        "set spec.build.precision to fp16 and remove spec.experiment"
        in exp["recommendation"]["promote"]
    )
    assert d.router.desired == {"e": 100}
    variant_deployments = {("Deployment", f"e-{rev}-cpu") for rev in revs.values()}
    assert variant_deployments <= set(d.delete)
    assert ("Deployment", f"e-{exp['baseline']['revision']}-cpu") not in d.delete
    obs = _exists(d, obs)
    # 6. a steady Completed experiment writes nothing and takes the variants' Services away
    d = decide(body, obs, CONFIG, "2026-01-01T00:06:00Z")
    assert d.status is None
    assert ("Service", "e-x-fp16") in d.delete
    # 7. the one change that promotes fp16: no build (its plan is recorded), a canary begins
    body["spec"]["build"]["precision"] = "fp16"
    del body["spec"]["experiment"]
    known = {job: plan for (_, job), plan in indexes.plan_entry("ns", body["status"], "u1").items()}
    after_jobs = Observed(deployments=obs.deployments, services=obs.services, known_plans=known)
    d = decide(body, after_jobs, CONFIG, "2026-01-01T00:07:00Z")
    assert d.create == []
    fp16_rev = revs["fp16"]
    assert d.status["revision"] == fp16_rev
    assert any(o["metadata"]["name"] == f"e-{fp16_rev}-cpu" for o in d.apply)
    assert d.status["experiment"]["phase"] == "Completed"  # the record stays


def _exists_all(body: dict[str, Any], obs: Observed) -> list[dict[str, Any]]:
    """Every Deployment the reconcile wants now (applied or not)."""
    d = decide(body, Observed(jobs=obs.jobs, pods=obs.pods), CONFIG, "2026-01-01T00:01:06Z")
    return [o for o in d.apply if o["kind"] == "Deployment"]


def test_a_running_experiment_is_measured_every_interval_and_at_its_end() -> None:
    from datetime import UTC, datetime

    from trtops_operator.experiment.measurement import measurement_due
    from trtops_operator.models import Experiment

    exp = Experiment.model_validate(
        {"variants": [{"name": "a", "precision": "fp16", "weight": 10}], "durationSeconds": 100,
         "intervalSeconds": 30}
    )  # fmt: skip
    running = {"phase": "Running", "startedAt": "2026-01-01T00:00:00Z",
               "endsAt": "2026-01-01T00:01:40Z"}  # fmt: skip

    def at(s: int) -> datetime:
        return datetime(2026, 1, 1, 0, s // 60, s % 60, tzinfo=UTC)

    assert not measurement_due(running, exp, at(10))
    assert measurement_due(running, exp, at(30))
    measured = {**running, "lastMeasuredAt": "2026-01-01T00:01:30Z"}
    assert not measurement_due(measured, exp, at(95))
    assert measurement_due(measured, exp, at(100))  # the end: once more, at once
    assert not measurement_due({**running, "phase": "Completed"}, exp, at(200))


def test_a_hand_edited_record_starts_the_experiment_over_instead_of_failing() -> None:
    body = _settled_body()
    obs = _exists(decide(body, Observed(), CONFIG, "2026-01-01T00:00:00Z"), Observed())
    d = decide(body, obs, CONFIG, "2026-01-01T00:00:01Z")
    key = d.status["experiment"]["key"]
    body["status"]["experiment"] = {
        "key": key,
        "phase": "Running",
        "startedAt": "yesterday",
        "variants": [{"name": "fp16", "plans": [{"target": 7}]}],
    }
    d = decide(body, obs, CONFIG, "2026-01-01T00:00:02Z")
    assert d.status["experiment"]["phase"] == "Building"
    assert d.status["experiment"]["startedAt"] is None  # nulled in the merge patch
