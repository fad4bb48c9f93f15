"""The evidence rules of the step machine (issue 13): no promotion without a Passed analysis on
each weighted step's own traffic, whatever verdicts arrive; a catastrophic failure rolls back
at once."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from trtops_operator.canary.analysis import Check, RevisionMetrics, Verdict
from trtops_operator.canary.steps import analysis_due, analysis_window
from trtops_operator.models import RolloutSpec

from tests.canary.test_steps import (
    CANARY,
    STABLE,
    Run,
    condition,
    failed,
    inconclusive,
    insufficient,
    passed,
    rollout,
)


def catastrophic() -> Verdict:
    msg = "canary answered none of its 400 requests successfully (400 client errors, 0 server"
    return Verdict(
        "Failed",
        msg,
        RevisionMetrics(requests=400, error_rate=0.0, client_error_rate=1.0),
        STABLE,
        checks=(Check("successes", "Failed", msg, 400, 0),),
        catastrophic=True,
    )


VERDICTS = {
    "P": passed,
    "F": failed,
    "I": insufficient,
    "X": inconclusive,
    "C": catastrophic,
}


def test_catastrophic_failure_rolls_back_at_the_first_analysis() -> None:
    run = Run()
    run.at(0)
    d = run.at(10, catastrophic())
    assert d.state.phase == "RolledBack"
    assert d.rollback is not None
    assert d.rollback.reason == "CatastrophicFailure"
    assert "not waiting for failureLimit 2" in d.rollback.message
    assert "none of its 400 requests" in d.rollback.message
    assert condition(d, "RolledBack")[:2] == ("True", "CatastrophicFailure")
    assert d.canary_weight == 0


def test_input_3_data_lost_after_a_pass_holds_the_step() -> None:
    """Issue 13, input 3: one step {setWeight: 30, pauseSeconds: 30}, analysis every 10 s; the
    first analysis passes, then Prometheus loses its data and every later analysis sees none.
    The rollout must hold (not promote) until a Passed on fresh data."""
    run = Run(rollout([{"setWeight": 30, "pauseSeconds": 30}]))
    run.at(0)
    run.at(10, passed())
    for t in range(20, 300, 10):
        d = run.at(t, insufficient())
        assert (d.state.phase, d.canary_weight) == ("Progressing", 30), t
        assert condition(d, "Progressing")[1] == "InsufficientData"
    d = run.at(300, passed())
    assert d.state.phase == "Promoting"


def test_the_window_never_reaches_before_the_step_began() -> None:
    run = Run()
    run.at(0)
    run.at(10, passed())
    d = run.at(31)  # pause over and passed: step 2 begins now
    assert d.state.step_index == 1
    assert not analysis_due(run.spec, d.state, d.state.step_started_at)  # type: ignore[arg-type]
    now = d.state.step_started_at
    assert now is not None
    import datetime as dt

    assert analysis_window(d.state, now + dt.timedelta(seconds=10)) == 10.0
    assert analysis_window(d.state, now + dt.timedelta(seconds=45)) == 45.0


def _analysis_spec(weights: list[int], pauses: list[int]) -> RolloutSpec:
    return rollout(
        [{"setWeight": w, "pauseSeconds": p} for w, p in zip(weights, pauses, strict=True)]
    )


@st.composite
def scenarios(draw: Any) -> tuple[RolloutSpec, list[tuple[int, str | None, int]]]:
    n = draw(st.integers(1, 4))
    weights = sorted(draw(st.lists(st.integers(0, 100), min_size=n, max_size=n)))
    if weights[-1] == 0:
        weights[-1] = draw(st.integers(1, 100))
    pauses = draw(st.lists(st.sampled_from([0, 10, 30]), min_size=n, max_size=n))
    events = draw(
        st.lists(
            st.tuples(
                st.integers(1, 40),
                st.one_of(st.none(), st.sampled_from(sorted(VERDICTS))),
                st.integers(0, 6),
            ),
            max_size=40,
        )
    )
    return _analysis_spec(weights, pauses), events


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_promotion_without_a_pass_on_each_weighted_step(
    scenario: tuple[RolloutSpec, list[tuple[int, str | None, int]]],
) -> None:
    """Whatever sequence of verdicts arrives, at whatever times, with pods coming and going:
    when the canary is promoted, every step with weight > 0 saw a Passed analysis taken during
    that step, and the last analysis of that step was Passed (so no InsufficientData,
    Inconclusive or Failed came after it); and nothing moves after a rollback."""
    spec, events = scenario
    run = Run(spec)
    run.at(0)
    t = 0
    seen: dict[int, list[str]] = {}
    for gap, code, available in events:
        t += gap
        before = run.state
        verdict = VERDICTS[code]() if code else None
        d = run.at(t, verdict, available=available)
        if verdict is not None and before.phase == "Progressing":
            seen.setdefault(before.step_index, []).append(verdict.kind)
        if before.phase == "RolledBack":
            assert d.state.phase == "RolledBack"
            assert not d.promote
        if d.state.phase in ("Promoting", "Promoted"):
            for i, step in enumerate(spec.steps):
                if step.set_weight > 0:
                    assert seen.get(i), (i, seen)
                    assert seen[i][-1] == "Passed", (i, seen)
        if code == "C" and before.phase == "Progressing":
            assert d.state.phase == "RolledBack"
    assert CANARY.requests >= 100  # the Passed fixture carries the evidence it claims
