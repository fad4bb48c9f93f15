"""The operator's metrics without a cluster: the engine collector reads accuracy and traffic
weights from engine status at scrape time, and each finished build is counted and timed once."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from trtops_operator import metrics
from trtops_operator.config import OperatorConfig
from trtops_operator.reconcile import BuildOutcome, Decision, JobObs, Observed, PodObs, decide

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

ACCURACY = {
    "passed": True,
    "outputs": {
        "logits": {"top1Agreement": 0.98, "meanAbsError": 0.0125, "cosineSimilarity": 0.999},
        # A regression head: no classes, so no top-1 agreement; its error is still reported.
        "box": {"top1Agreement": None, "meanAbsError": 0.5},
    },
}


def engine(name: str = "conv", **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}"}, "status": status}


def scrape(source: metrics.EngineSource) -> Samples:
    registry = CollectorRegistry()
    registry.register(metrics.EngineCollector(source))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def index(*bodies: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """What kopf's engine_index looks like: (namespace, name) -> the stored bodies."""
    return {(b["metadata"]["namespace"], b["metadata"]["name"]): [b] for b in bodies}


def lbl(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_accuracy_per_plan_and_output_of_the_current_revision() -> None:
    body = engine(
        revision="r2",
        plans=[
            {"target": "cpu", "precision": "int8", "job": "j", "key": "k", "accuracy": ACCURACY},
            {"target": "H100", "precision": "int8", "job": "j2", "key": "k2"},  # no gate
        ],
    )
    samples = scrape(lambda: index(body))
    plan = {"namespace": "ns", "engine": "conv", "revision": "r2", "precision": "int8"}
    assert {k: v for k, v in samples.items() if k[0] == "trtops_plan_top1_agreement"} == {
        ("trtops_plan_top1_agreement", lbl(**plan, target="cpu", output="logits")): 0.98
    }
    assert {k: v for k, v in samples.items() if k[0] == "trtops_plan_mean_abs_error"} == {
        ("trtops_plan_mean_abs_error", lbl(**plan, target="cpu", output="logits")): 0.0125,
        ("trtops_plan_mean_abs_error", lbl(**plan, target="cpu", output="box")): 0.5,
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param({}, {}, id="nothing-serves-yet"),
        pytest.param(
            {"stable": {"revision": "r1", "weight": 100, "plans": [{"precision": "fp32"}]}},
            {("r1", "fp32", "stable"): 100.0},
            id="stable-only",
        ),
        pytest.param(
            {
                "stable": {"revision": "r1", "weight": 70, "plans": [{"precision": "fp32"}]},
                "canary": {
                    "revision": "r2",
                    "weight": 30,
                    "phase": "Progressing",
                    "plans": [{"precision": "fp16"}],
                },
            },
            {("r1", "fp32", "stable"): 70.0, ("r2", "fp16", "canary"): 30.0},
            id="canary-in-flight",
        ),
        pytest.param(
            {
                "stable": {"revision": "r1", "weight": 100, "plans": [{"precision": "fp32"}]},
                "canary": {"revision": "r3", "weight": 0, "phase": "RolledBack", "plans": []},
            },
            {("r1", "fp32", "stable"): 100.0, ("r3", "", "canary"): 0.0},
            id="rolled-back-canary-drops-to-zero",
        ),
        pytest.param(
            {"stable": {"revision": "r1", "weight": "lots"}, "canary": {"weight": 5}},
            {},
            id="garbled-is-skipped",
        ),
    ],
)
def test_traffic_weight_per_revision_and_role(
    status: dict[str, Any], expected: dict[tuple[str, str, str], float]
) -> None:
    samples = scrape(lambda: index(engine(**status)))
    got = {
        (dict(labels)["revision"], dict(labels)["precision"], dict(labels)["role"]): v
        for (name, labels), v in samples.items()
        if name == "trtops_canary_weight"
    }
    assert got == expected


def test_a_malformed_engine_does_not_cost_the_others() -> None:
    bad = engine("bad", plans="not a list of plans", stable=["nor", "a", "mapping"])
    good = engine("good", stable={"revision": "r1", "weight": 100})
    samples = scrape(lambda: index(bad, good))
    assert {dict(lbl)["engine"] for (n, lbl), _ in samples.items()} == {"good"}


def test_state_follows_the_index_at_every_scrape_without_recording() -> None:
    """Level-based: a restarted operator shows the same values as soon as its index is filled;
    a deleted engine's series go away."""
    idx: dict[tuple[str, str], list[dict[str, Any]]] = {}
    assert scrape(lambda: idx) == {}
    idx.update(index(engine(stable={"revision": "r1", "weight": 100})))
    assert len(scrape(lambda: idx)) == 1
    idx.clear()
    assert scrape(lambda: idx) == {}


class _Shifting(Mapping[tuple[str, str], Iterable[dict[str, Any]]]):
    """An index that another thread changes while it is read: the first listing fails the way a
    dict changing size mid-iteration does, and a key listed may be gone when looked up."""

    def __init__(self) -> None:
        self.listings = 0
        self.items = index(engine("a", stable={"revision": "r1", "weight": 100}))

    def __iter__(self) -> Any:
        self.listings += 1
        if self.listings == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return iter([*self.items, ("ns", "deleted-meanwhile")])

    def __getitem__(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return self.items[key]

    def __len__(self) -> int:
        return len(self.items)


def test_snapshot_survives_an_index_changing_under_it() -> None:
    shifting = _Shifting()
    samples = scrape(lambda: shifting)
    assert shifting.listings == 2
    assert [dict(lbl)["engine"] for (_, lbl) in samples] == ["a"]


def test_scrapes_in_parallel_with_index_writes() -> None:
    """The real race, bounded: one thread rewrites a plain dict index while this one scrapes."""
    idx: dict[tuple[str, str], list[dict[str, Any]]] = {}
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            idx[("ns", f"e{i % 100}")] = [engine(f"e{i}", stable={"revision": "r", "weight": 100})]
            if i % 3 == 0:
                idx.pop(("ns", f"e{(i * 7) % 100}"), None)
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(10):
            scrape(lambda: idx)  # must never raise
    finally:
        stop.set()
        thread.join(5)


# --- builds: counted once, timed once ----------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def built(ns: str, outcomes: list[BuildOutcome], **status: Any) -> tuple[dict[str, Any], Decision]:
    body = {
        "metadata": {"namespace": ns, "name": "conv", "uid": f"uid-{ns}"},
        "spec": {
            "model": {"uri": "m.onnx"},
            "build": {"precision": "fp16"},
            "storage": {"claimName": "c"},
            "serving": {"backend": "onnxruntime"},
        },
        "status": status,
    }
    return body, Decision(outcomes=outcomes)


def test_each_build_is_counted_and_timed_once_however_often_it_is_reported() -> None:
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    done = BuildOutcome("succeeded", "job-a", "fp16", "cpu", 42.0)
    before = {o: sample("trtops_builds_total", outcome=o) for o in metrics.OUTCOMES}
    body, decision = built(ns, [done, BuildOutcome("failed", "job-b", "fp16", "H100")])
    metrics.record_builds(body, decision)
    # A reconcile that read the body before our status patch arrived reports them again.
    metrics.record_builds(body, decision)
    after = {o: sample("trtops_builds_total", outcome=o) for o in metrics.OUTCOMES}
    assert {o: after[o] - before[o] for o in after} == {
        "succeeded": 1,
        "cached": 0,
        "reused": 0,
        "failed": 1,
    }
    labels = {"namespace": ns, "engine": "conv", "precision": "fp16", "target": "cpu"}
    assert sample("trtops_build_duration_seconds_count", **labels) == 1
    assert sample("trtops_build_duration_seconds_sum", **labels) == 42.0
    assert sample("trtops_build_duration_seconds_bucket", **labels, le="30.0") == 0
    assert sample("trtops_build_duration_seconds_bucket", **labels, le="60.0") == 1
    # The same Job finishing for another engine (it co-owns the Job) is that engine's build.
    other = {**body, "metadata": {**body["metadata"], "uid": "another-engine"}}
    metrics.record_builds(other, decision)
    assert sample("trtops_builds_total", outcome="succeeded") == after["succeeded"] + 1


def test_cached_and_reused_builds_are_counted_but_not_timed() -> None:
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    body, decision = built(
        ns,
        [
            BuildOutcome("cached", "job-c", "fp16", "cpu", 0.2),
            BuildOutcome("reused", "job-d", "fp16", "cpu"),
        ],
    )
    metrics.record_builds(body, decision)
    labels = {"namespace": ns, "engine": "conv", "precision": "fp16", "target": "cpu"}
    assert REGISTRY.get_sample_value("trtops_build_duration_seconds_count", labels) is None


def test_a_building_engine_starts_its_duration_series_at_zero() -> None:
    """So the first build's increase is visible to rate()/increase() (a series first seen at 1
    has no increase as far as Prometheus knows)."""
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    labels = {"namespace": ns, "engine": "conv", "precision": "fp16", "target": "cpu"}
    body, decision = built(ns, [])
    metrics.record_builds(body, decision)  # nothing building: no series
    assert REGISTRY.get_sample_value("trtops_build_duration_seconds_count", labels) is None
    body, decision = built(ns, [], conditions=[{"type": "Built", "reason": "Building"}])
    metrics.record_builds(body, decision)
    assert REGISTRY.get_sample_value("trtops_build_duration_seconds_count", labels) == 0


def test_decide_reports_what_the_metrics_are_labelled_by() -> None:
    """The path the handlers take: a worker result read by ``decide`` becomes one timed build."""
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    body, _ = built(ns, [])
    first = decide(body, Observed(), OperatorConfig(worker_image="w:1"), "2026-01-01T00:00:00Z")
    (job,) = [j["metadata"]["name"] for j in first.create]
    result = {
        "ok": True,
        "key": "k" * 64,
        "path": "/plans/k",
        "sha256": "s" * 64,
        "precision": "fp16",
        "buildSeconds": 7.5,
    }
    obs = Observed(
        jobs={job: JobObs(job, (f"uid-{ns}",), succeeded=True)},
        pods={job: [PodObs("p", job, "t", "Succeeded", json.dumps(result))]},
    )
    d = decide(body, obs, OperatorConfig(worker_image="w:1"), "2026-01-01T00:00:00Z")
    assert d.outcomes == [BuildOutcome("succeeded", job, "fp16", "cpu", 7.5)]
    metrics.record_builds(body, first)  # the build starts: its series appears at 0
    metrics.record_builds(body, d)
    labels = {"namespace": ns, "engine": "conv", "precision": "fp16", "target": "cpu"}
    assert sample("trtops_build_duration_seconds_sum", **labels) == 7.5


def test_once_forgets_only_the_oldest_beyond_its_size() -> None:
    once = metrics.Once(size=2)
    assert [once.first(k) for k in ("a", "b", "a", "c")] == [True, True, False, True]
    assert once.first("b") is True  # the least recently seen went first
    assert once.first("c") is False  # the two most recent are remembered
