"""Events: every condition transition is told, in one Event per type and reconcile (the API
writes they cost dominated the operator's work with hundreds of engines)."""

from __future__ import annotations

import json

from trtops_operator.conditions import fold_transitions
from trtops_operator.reconcile import Event, JobObs, Observed, PodObs, decide

from tests.operator.test_reconcile import CONFIG, NOW, RESULT, body, job_name


def test_creation_tells_every_transition_in_the_build_started_event() -> None:
    d = decide(body(), Observed(), CONFIG, NOW)
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "BuildStarted")]
    message = d.events[0].message
    for told in ("Built=False", "Ready=False", "Progressing=True", "Degraded=False"):
        assert told in message


def test_a_failed_build_is_one_warning_led_by_the_workers_reason() -> None:
    fail = {"ok": False, "category": "accuracy", "reason": "AccuracyGateFailed", "message": "low"}
    first = decide(body(), Observed(), CONFIG, NOW)
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), failed=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Failed", json.dumps(fail))]},
    )
    d = decide(body(first.status), obs, CONFIG, NOW)
    warnings = [e for e in d.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["AccuracyGateFailed"]
    assert "Built=False" in warnings[0].message
    assert "Degraded=True" in warnings[0].message


def test_a_finished_build_is_one_event() -> None:
    first = decide(body(), Observed(), CONFIG, NOW)
    obs = Observed(
        jobs={job_name(): JobObs(job_name(), ("u1",), succeeded=True)},
        pods={job_name(): [PodObs("p", job_name(), "t", "Succeeded", json.dumps(RESULT))]},
    )
    d = decide(body(first.status), obs, CONFIG, NOW)
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "Built")]
    assert "Ready=False" in d.events[0].message


def test_explicit_events_keep_their_reasons() -> None:
    events = [
        Event("Normal", "Built", "Built=True: ok", transition=True),
        Event("Warning", "RolledBack", "canary breached its SLO"),
        Event("Normal", "PlanReused", "H100: reused"),
        Event("Normal", "CanaryStep", "weight 50"),
    ]
    folded = fold_transitions(events)
    assert [(e.type, e.reason) for e in folded] == [
        ("Warning", "RolledBack"),
        ("Normal", "PlanReused"),
        ("Normal", "CanaryStep"),
    ]
    assert folded[1].message == "H100: reused; Built=True: ok"
    assert not any(e.transition for e in folded)


def test_a_rollback_is_one_warning_that_tells_its_transitions() -> None:
    """Before: the Warning ``RolledBack`` and a Normal Event of the same reason (led by
    ``Progressing=False/RolledBack``) told one rollback twice."""
    events = [
        Event("Normal", "RolledBack", "Progressing=False: aborted", transition=True),
        Event("Normal", "Aborted", "RolledBack=True: aborted", transition=True),
        Event("Warning", "RolledBack", "canary c1 rolled back: aborted"),
    ]
    (folded,) = fold_transitions(events)
    assert (folded.type, folded.reason) == ("Warning", "RolledBack")
    assert folded.message == (
        "canary c1 rolled back: aborted; Progressing=False: aborted; RolledBack=True: aborted"
    )


def test_a_warning_transition_never_hides_in_a_normal_event() -> None:
    events = [
        Event("Warning", "Unavailable", "Degraded=True: no pod", transition=True),
        Event("Normal", "Promoted", "revision r2 promoted"),
    ]
    assert [(e.type, e.reason) for e in fold_transitions(events)] == [
        ("Normal", "Promoted"),
        ("Warning", "Unavailable"),
    ]
