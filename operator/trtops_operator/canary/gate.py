"""The analysis gate of a canary step: when an analysis is due, how far back its window may
reach, and what its verdict does to the state (history, failure counters, the rollback report).
Pure: ``now`` is an argument."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Literal

from trtops_operator.canary.analysis import Breach, Verdict
from trtops_operator.canary.state import (
    TERMINAL,
    AnalysisRecord,
    CanaryEvent,
    CanaryState,
    Options,
    RollbackReport,
    rounded,
)
from trtops_operator.models import RolloutSpec

__all__ = ["analysis_anchor", "analysis_due", "analysis_window", "record_verdict"]


def analysis_anchor(state: CanaryState) -> dt.datetime:
    """When the current analysis interval began: the last analysis, or the step's start."""
    anchors = [t for t in (state.last_analysis_at, state.step_started_at) if t is not None]
    return max(anchors) if anchors else state.started_at


def analysis_window(state: CanaryState, now: dt.datetime) -> float:
    """Seconds the canary's current weight has been in effect: the most an analysis window may
    reach back, so the first analysis of a step judges only that step's traffic."""
    began = state.step_started_at or state.started_at
    return max((now - began).total_seconds(), 0.0)


def analysis_due(rollout: RolloutSpec, state: CanaryState, now: dt.datetime) -> bool:
    """True when an analysis should run now: configured, not finished, and one interval after
    the later of the last analysis and the start of the current step (so every step gets an
    analysis of traffic at its own weight)."""
    if rollout.analysis is None or state.phase in TERMINAL:
        return False
    elapsed = (now - analysis_anchor(state)).total_seconds()
    return elapsed >= rollout.analysis.interval_seconds


def record_verdict(
    rollout: RolloutSpec, options: Options, now: dt.datetime, s: CanaryState, v: Verdict
) -> tuple[CanaryState, RollbackReport | None, list[CanaryEvent]]:
    """What verdict ``v`` does to the state: kept in the (bounded) history; Passed marks the
    step passed; Inconclusive changes no counter; Failed and (past its deadline)
    InsufficientData count towards ``failureLimit``; a catastrophic Failed rolls back at once.
    Returns the state, the rollback report when it must roll back, and the Events to post."""
    events: list[CanaryEvent] = []
    record = AnalysisRecord(
        now,
        s.step_index,
        v.kind,
        v.reason,
        rounded(v.canary),
        rounded(v.stable),
        None if v.latency_ratio is None else round(v.latency_ratio, 4),
        v.checks,
        s.weight,
    )
    history = (*s.history, record)[-options.history_limit :]
    s = replace(
        s,
        last_analysis_at=now,
        last_verdict=v.kind,
        last_reason=v.reason,
        history=history,
        canary_metrics=record.canary or s.canary_metrics,
        stable_metrics=record.stable or s.stable_metrics,
    )
    assert rollout.analysis is not None
    limit = rollout.analysis.failure_limit
    if v.kind == "Passed":
        passed = replace(s, consecutive_failures=0, insufficient_since=None, step_passed=True)
        return passed, None, events
    if v.kind == "Inconclusive":
        if not (s.history[-2:-1] and s.history[-2].verdict == "Inconclusive"):
            message = f"holding at weight {s.weight}: {v.reason}"
            events.append(CanaryEvent("Warning", "AnalysisInconclusive", message))
        return s, None, events
    breaches = v.breaches
    reason: Literal["AnalysisFailed", "CatastrophicFailure", "InsufficientData"] = "AnalysisFailed"
    if v.kind == "InsufficientData":
        since = s.insufficient_since or now
        s = replace(s, insufficient_since=since)
        deadline = options.insufficient_data_deadline_seconds
        if deadline is None or (now - since).total_seconds() < deadline:
            return s, None, events
        reason = "InsufficientData"
        measured = v.canary.requests if v.canary is not None else 0.0
        breaches = (Breach("minRequests", measured, rollout.analysis.min_requests),)
    else:
        s = replace(s, insufficient_since=None)
    failures = s.consecutive_failures + 1
    s = replace(s, consecutive_failures=failures, step_passed=False)
    text = v.reason if v.kind == "Failed" else "; ".join(b.describe() for b in breaches)
    if v.kind == "Failed" and v.catastrophic:
        message = f"catastrophic failure, not waiting for failureLimit {limit}: {v.reason}"
        report = RollbackReport(
            "CatastrophicFailure", message, now, breaches, s.canary_metrics, s.stable_metrics
        )
        return s, report, events
    if failures < limit:
        events.append(CanaryEvent("Warning", "AnalysisFailed", f"{failures}/{limit}: {text}"))
        return s, None, events
    message = f"{failures} consecutive failed analyses (failureLimit {limit}): {text}"
    report = RollbackReport(reason, message, now, breaches, s.canary_metrics, s.stable_metrics)
    return s, report, events
