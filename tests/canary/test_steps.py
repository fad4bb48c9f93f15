"""The canary state machine: steps, analysis gates, rollback, commands, restart-safety."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pytest
from trtops_operator.canary.analysis import Breach, RevisionMetrics, Verdict
from trtops_operator.canary.steps import (
    CanaryState,
    CanaryTurn,
    Options,
    analysis_due,
    decide,
    needs_new_attempt,
    start,
)
from trtops_operator.models import RolloutSpec

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
CANARY = RevisionMetrics(
    requests=500, qps=8.3, p50_ms=4.0, p99_ms=20.0, error_rate=0.0, client_error_rate=0.002
)
STABLE = RevisionMetrics(requests=4500, qps=75.0, p50_ms=3.5, p99_ms=18.0, error_rate=0.001)
SLOW = RevisionMetrics(requests=500, qps=8.3, p50_ms=40.0, p99_ms=130.0, error_rate=0.0)


def rollout(
    steps: list[dict[str, Any]], analysis: bool = True, router: str = "gatewayAPI"
) -> RolloutSpec:
    routers = {"gatewayAPI": {"gatewayAPI": {"httpRoute": "r"}}, "replicas": {"replicas": {}}}
    spec: dict[str, Any] = {"trafficRouter": routers[router], "steps": steps}
    if analysis:
        spec["analysis"] = {
            "prometheus": {"address": "http://prom:9090"},
            "intervalSeconds": 10,
            "failureLimit": 2,
            "minRequests": 100,
            "slo": {"p99LatencyMs": 80, "maxErrorRate": 0.01},
        }
    return RolloutSpec.model_validate(spec)


TWO_STEPS = rollout([{"setWeight": 10, "pauseSeconds": 30}, {"setWeight": 50, "pauseSeconds": 30}])


def passed() -> Verdict:
    return Verdict("Passed", "ok", CANARY, STABLE, 20.0 / 18.0)


def failed() -> Verdict:
    b = Breach("p99LatencyMs", 130.0, 80.0)
    return Verdict("Failed", b.describe(), SLOW, STABLE, 130.0 / 18.0, (b,))


def insufficient() -> Verdict:
    return Verdict("InsufficientData", "3 requests", RevisionMetrics(requests=3), STABLE)


def inconclusive() -> Verdict:
    return Verdict.make_inconclusive("PrometheusUnreachable", "connection refused")


def begin(
    spec: RolloutSpec = TWO_STEPS, annotations: Mapping[str, str] | None = None
) -> CanaryState:
    return start(
        spec,
        revision="r2",
        key="k2",
        stable_revision="r1",
        generation=3,
        now=T0,
        annotations=annotations,
    )


class Run:
    """Drives the machine through time like a reconciler would, round-tripping the state
    through JSON between calls (as status does), and checks each decision is the same from
    the in-memory state and from the JSON copy."""

    def __init__(
        self, spec: RolloutSpec = TWO_STEPS, options: Options | None = None, **kw: Any
    ) -> None:
        self.spec = spec
        self.options = options
        self.state = begin(spec, **kw)
        self.decisions: list[CanaryTurn] = []

    def at(
        self,
        seconds: float,
        verdict: Verdict | None = None,
        annotations: Mapping[str, str] | None = None,
        available: int = 0,
        replicas: int = 4,
    ) -> CanaryTurn:
        now = T0 + dt.timedelta(seconds=seconds)
        kwargs: dict[str, Any] = dict(
            now=now,
            stable_replicas=replicas,
            canary_available=available,
            verdict=verdict,
            annotations=annotations,
            options=self.options,
        )
        d = decide(self.spec, self.state, **kwargs)
        copy = CanaryState.from_json(json.loads(json.dumps(self.state.to_json())))
        assert decide(self.spec, copy, **kwargs) == d  # restart-safe: same decision from status
        self.state = CanaryState.from_json(json.loads(json.dumps(d.state.to_json())))
        assert self.state == d.state  # what status stores is exactly the state
        self.decisions.append(d)
        return d


def reasons(d: CanaryTurn) -> list[str]:
    return [e.reason for e in d.events]


def condition(d: CanaryTurn, type_: str) -> tuple[str, str, str]:
    c = next(c for c in d.conditions if c.type == type_)
    return c.status, c.reason, c.message


def test_start_sets_first_weight_and_sized_canary() -> None:
    d = Run().at(0)
    assert (d.canary_weight, d.stable_weight, d.canary_replicas) == (10, 90, 1)
    assert d.state.phase == "Progressing"
    assert d.requeue_after == 10  # first analysis one interval in
    assert condition(d, "Progressing")[:2] == ("True", "CanaryProgressing")


@pytest.mark.parametrize(
    ("events", "step", "weight"),
    [
        pytest.param([(10, "P")], 0, 10, id="passed-but-pause-not-over"),
        pytest.param([(31, None)], 0, 10, id="pause-over-but-never-analysed"),
        pytest.param([(10, "I"), (20, "I"), (31, None)], 0, 10, id="pause-over-only-insufficient"),
        pytest.param([(10, "P"), (31, None)], 1, 50, id="pause-over-and-passed-once"),
        pytest.param([(10, "P"), (20, "F"), (31, None)], 0, 10, id="latest-failed-holds"),
        pytest.param([(10, "P"), (20, "X"), (31, None)], 0, 10, id="latest-inconclusive-holds"),
        # Issue 13, input 3: a Passed earlier in the step is not enough once a later analysis
        # saw no data (Prometheus lost it, traffic stopped): the step holds until a Passed on
        # fresh data.
        pytest.param([(10, "P"), (20, "I"), (31, None)], 0, 10, id="latest-insufficient-holds"),
        pytest.param(
            [(10, "P"), (20, "I"), (31, None), (40, "P")], 1, 50, id="fresh-pass-releases"
        ),
        pytest.param([(10, "P"), (31, None), (40, "P")], 1, 50, id="new-step-needs-own-pass"),
    ],
)
def test_step_gate(events: list[tuple[int, str | None]], step: int, weight: int) -> None:
    verdicts = {"P": passed, "F": failed, "I": insufficient, "X": inconclusive}
    run = Run()
    run.at(0)
    for t, v in events:
        d = run.at(t, verdicts[v]() if v else None)
    assert (d.state.step_index, d.canary_weight) == (step, weight)
    assert d.state.phase == "Progressing"


def test_good_canary_walks_every_step_then_promotes_once_pods_are_ready() -> None:
    run = Run()
    run.at(0)
    run.at(10, passed())
    d = run.at(30)
    assert (d.state.step_index, d.canary_weight, d.canary_replicas) == (1, 50, 2)
    assert "CanaryStep" in reasons(d)
    run.at(40, passed())
    d = run.at(60)
    assert d.state.phase == "Promoting"
    assert (d.canary_weight, d.canary_replicas, d.promote) == (50, 4, False)  # scale up first
    d = run.at(65, available=3)
    assert (d.state.phase, d.promote) == ("Promoting", False)
    d = run.at(70, available=4)
    assert (d.state.phase, d.promote, d.canary_weight) == ("Promoted", True, 100)
    assert "Promoted" in reasons(d)
    assert d.requeue_after is None
    again = run.at(80, available=4)
    assert (again.promote, again.canary_weight, again.canary_replicas) == (False, 100, 4)


def test_without_analysis_steps_advance_on_time_alone() -> None:
    spec = rollout([{"setWeight": 20, "pauseSeconds": 15}, {"setWeight": 60}], analysis=False)
    run = Run(spec)
    assert run.at(14).canary_weight == 20
    d = run.at(15)  # step 1 over; step 2 has no pause: straight on to promotion
    assert d.state.phase == "Promoting"
    assert run.at(16, available=4).promote


def test_rollback_after_failure_limit_consecutive_failures() -> None:
    run = Run()
    run.at(0)
    d = run.at(10, failed())
    assert d.rollback is None
    assert d.state.consecutive_failures == 1
    assert "AnalysisFailed" in reasons(d)
    run.at(20, passed())  # a pass resets the streak
    run.at(30, failed())
    d = run.at(40, failed())
    assert d.rollback is not None
    assert d.rollback.reason == "AnalysisFailed"
    assert d.rollback.breaches == (Breach("p99LatencyMs", 130.0, 80.0),)
    assert d.rollback.canary is not None
    assert d.rollback.canary.p99_ms == 130.0
    assert (d.canary_weight, d.stable_weight, d.canary_replicas) == (0, 100, 0)
    status, reason, message = condition(d, "RolledBack")
    assert (status, reason) == ("True", "AnalysisFailed")
    assert "canary p99 130.0 ms > 80 ms (p99LatencyMs)" in message
    assert next(e for e in d.events if e.reason == "RolledBack").type == "Warning"
    assert d.state.to_json()["rollback"]["breaches"] == [
        {"slo": "p99LatencyMs", "measured": 130.0, "threshold": 80.0}
    ]
    later = run.at(500, passed())  # terminal: holds weight 0, ignores analyses
    assert (later.canary_weight, later.canary_replicas, later.rollback) == (0, 0, None)


def test_insufficient_data_is_no_failure_without_deadline() -> None:
    run = Run()
    for i in range(1, 60):
        d = run.at(10 * i, insufficient())
    assert d.state.phase == "Progressing"
    assert d.state.consecutive_failures == 0
    assert condition(d, "Progressing")[1] == "InsufficientData"


def test_insufficient_data_fails_after_the_deadline() -> None:
    run = Run(options=Options(insufficient_data_deadline_seconds=30))
    run.at(0)
    for t in (10, 20, 30):
        assert run.at(t, insufficient()).state.consecutive_failures == 0  # 0..20 s since first
    d = run.at(40, insufficient())  # 30 s since the first InsufficientData
    assert d.state.consecutive_failures == 1
    d = run.at(50, insufficient())
    assert d.rollback is not None
    assert d.rollback.reason == "InsufficientData"
    assert d.rollback.breaches[0].slo == "minRequests"
    run2 = Run(options=Options(insufficient_data_deadline_seconds=30))
    run2.at(10, insufficient())
    run2.at(20, passed())  # data came back: the clock restarts
    assert run2.at(45, insufficient()).state.insufficient_since == T0 + dt.timedelta(seconds=45)


def test_inconclusive_holds_never_promotes_never_rolls_back_and_says_so() -> None:
    spec = rollout([{"setWeight": 10, "pauseSeconds": 30}])
    run = Run(spec)
    run.at(10, passed())
    d = run.at(20, inconclusive())
    assert d.state.phase == "Progressing"
    _status, reason, message = condition(d, "Progressing")
    assert reason == "AnalysisInconclusive"
    assert "PrometheusUnreachable" in message
    assert reasons(d) == ["AnalysisInconclusive"]
    for t in range(30, 300, 10):  # the pause is long over, and the step had passed
        d = run.at(t, inconclusive())
        assert d.state.phase == "Progressing"
        assert d.events == ()  # one Warning per streak, not one per interval
    assert d.canary_weight == 10
    assert run.at(300, passed()).state.phase == "Promoting"


def test_inconclusive_neither_counts_nor_resets_failures() -> None:
    run = Run()
    run.at(10, failed())
    run.at(20, inconclusive())
    assert run.at(30, failed()).rollback is not None


AB = rollout([{"setWeight": 50, "pauseUntilPromoted": True}, {"setWeight": 80, "pauseSeconds": 5}])


def test_ab_experiment_holds_and_keeps_per_revision_metrics() -> None:
    run = Run(AB)
    for t in range(10, 3600, 10):
        d = run.at(t, passed())
    assert (d.state.phase, d.canary_weight) == ("Progressing", 50)
    assert condition(d, "Progressing")[1] == "AwaitingPromotion"
    status = d.state.to_json()
    assert status["canaryMetrics"] == {
        "requests": 500.0,
        "qps": 8.3,
        "p50Ms": 4.0,
        "p99Ms": 20.0,
        "errorRate": 0.0,
        "clientErrorRate": 0.002,
    }
    assert status["stableMetrics"]["p99Ms"] == 18.0
    assert len(status["history"]) == 10
    assert d.requeue_after == 10


@pytest.mark.parametrize(
    ("command", "phase", "weight", "event"),
    [
        ("promote", "Promoting", 50, "PromoteRequested"),
        ("abort", "RolledBack", 0, "RolledBack"),
        ("resume", "Progressing", 80, "CanaryStep"),  # released to the next step
        ("pause", "Progressing", 50, "Paused"),
    ],
)
def test_commands_on_an_experiment(command: str, phase: str, weight: int, event: str) -> None:
    run = Run(AB)
    run.at(10, passed())
    d = run.at(20, annotations={f"trtops.dev/{command}": "1700000000"})
    assert (d.state.phase, d.canary_weight) == (phase, weight)
    assert event in reasons(d)
    if command == "abort":
        assert d.rollback is not None
        assert d.rollback.reason == "Aborted"
        assert condition(d, "RolledBack")[:2] == ("True", "Aborted")


def test_a_command_applies_once_per_token() -> None:
    run = Run()
    run.at(10, passed())
    ann = {"trtops.dev/pause": "a"}
    assert run.at(12, annotations=ann).state.paused
    run.at(14, annotations={**ann, "trtops.dev/resume": "b"})
    d = run.at(16, annotations={**ann, "trtops.dev/resume": "b"})  # same tokens: no re-pause
    assert not d.state.paused
    d = run.at(18, annotations={"trtops.dev/pause": "c", "trtops.dev/resume": "b"})
    assert d.state.paused


def test_tokens_present_at_start_are_not_commands() -> None:
    ann = {"trtops.dev/abort": "from-last-week", "trtops.dev/promote": "old"}
    run = Run(annotations=ann)
    d = run.at(10, passed(), annotations=ann)
    assert (d.state.phase, d.rollback) == ("Progressing", None)


def test_pause_freezes_the_step_timer() -> None:
    run = Run()
    run.at(10, passed(), annotations={"trtops.dev/pause": "1"})
    d = run.at(100, passed(), annotations={"trtops.dev/pause": "1"})
    assert (d.state.step_index, condition(d, "Progressing")[1]) == (0, "CanaryPaused")
    d = run.at(110, passed(), annotations={"trtops.dev/pause": "1", "trtops.dev/resume": "1"})
    assert d.state.step_index == 0  # 10 s ran before the pause, 0 s after: 20 s left
    assert run.at(129, passed()).state.step_index == 0
    assert run.at(131, passed()).state.step_index == 1


def test_paused_canary_still_rolls_back_on_failures() -> None:
    run = Run()
    run.at(5, annotations={"trtops.dev/pause": "x"})
    run.at(15, failed())
    assert run.at(25, failed()).state.phase == "RolledBack"


@pytest.mark.parametrize(
    ("router", "replicas", "weights"),
    [
        # weighted router: ceil(S*w/100), at least 1
        ("gatewayAPI", 4, {10: 1, 25: 1, 50: 2, 60: 3, 100: 4}),
        # one Service: c/(S+c) ~ w/100, at least 1 pod, at most S
        ("replicas", 4, {10: 1, 20: 1, 33: 2, 50: 4, 90: 4}),
        ("replicas", 9, {10: 1, 20: 2, 25: 3, 50: 9}),
    ],
)
def test_canary_pods_per_weight(router: str, replicas: int, weights: dict[int, int]) -> None:
    for weight, pods in weights.items():
        spec = rollout([{"setWeight": weight, "pauseUntilPromoted": True}], router=router)
        assert Run(spec).at(0, replicas=replicas).canary_replicas == pods, weight


def test_restart_mid_analysis_resumes_same_step_and_weight() -> None:
    run = Run()
    run.at(10, passed())
    run.at(30)
    run.at(40, failed())
    saved = json.dumps(run.state.to_json())
    after = CanaryState.from_json(json.loads(saved))
    d = decide(TWO_STEPS, after, now=T0 + dt.timedelta(seconds=45), stable_replicas=4)
    assert (d.state.step_index, d.canary_weight, d.state.consecutive_failures) == (1, 50, 1)
    assert d.events == ()
    d = decide(
        TWO_STEPS, after, now=T0 + dt.timedelta(seconds=50), stable_replicas=4, verdict=failed()
    )
    assert d.rollback is not None  # the failure before the restart still counts


@pytest.mark.parametrize(
    ("phase", "revision", "generation", "expected"),
    [
        ("Progressing", "r2", 3, False),
        ("Progressing", "r2", 4, False),  # an edit does not restart a running canary
        ("Progressing", "r3", 4, True),
        ("RolledBack", "r2", 3, False),  # stays rolled back
        ("RolledBack", "r2", 4, True),  # a new generation retries
        ("Promoted", "r2", 9, False),
    ],
)
def test_needs_new_attempt(phase: str, revision: str, generation: int, expected: bool) -> None:
    state = CanaryState.from_json({**begin().to_json(), "phase": phase})
    assert needs_new_attempt(state, revision=revision, generation=generation) is expected
    assert needs_new_attempt(None, revision=revision, generation=generation)


def test_analysis_due() -> None:
    s = begin()
    due = [analysis_due(TWO_STEPS, s, T0 + dt.timedelta(seconds=t)) for t in (0, 9.9, 10)]
    assert due == [False, False, True]
    s2 = decide(
        TWO_STEPS, s, now=T0 + dt.timedelta(seconds=12), stable_replicas=1, verdict=passed()
    ).state
    assert not analysis_due(TWO_STEPS, s2, T0 + dt.timedelta(seconds=21))
    assert analysis_due(TWO_STEPS, s2, T0 + dt.timedelta(seconds=22))
    assert not analysis_due(
        rollout([{"setWeight": 5}], analysis=False), s, T0 + dt.timedelta(hours=1)
    )


def test_garbled_status_is_refused() -> None:
    with pytest.raises(ValueError, match="phase"):
        CanaryState.from_json({**begin().to_json(), "phase": "Dancing"})
    with pytest.raises(KeyError):
        CanaryState.from_json({"revision": "r2"})
