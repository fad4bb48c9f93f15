"""The canary state machine, pure and deterministic: (spec, state, now, verdict, commands) ->
(next state, what the world should look like, what happened).

Everything derives from the persisted :class:`CanaryState` (``status.canary``) and ``now``; no
clock, no I/O, no hidden memory. An operator restarted mid-rollout reads the state back and
makes the same decision, so weights never jump. The reconciler, each time it runs:

1. ``state = CanaryState.from_json(status["canary"])`` (or :func:`start` for a new attempt,
   see :func:`needs_new_attempt`),
2. if :func:`analysis_due`, runs the analysis (``prometheus.analyse``) for a verdict,
3. ``d = decide(rollout, state, now=..., stable_replicas=..., canary_available=...,
   verdict=..., annotations=metadata.annotations)``,
4. sets the router to ``d.canary_weight`` and scales the canary to ``d.canary_replicas`` (both
   level-triggered: the same every time until the state moves), carries out ``d.promote`` /
   ``d.rollback``, posts ``d.events``, merges ``d.conditions``,
5. writes ``d.state.to_json()`` to ``status.canary`` and requeues after ``d.requeue_after``.

Rules: a step sets a weight, then waits for its pause (``pauseSeconds``; ``pauseUntilPromoted``
waits for a person) and, when analysis is configured and the weight is above 0, for its latest
analysis, taken during this step, to be Passed (the evidence rule: InsufficientData and
Inconclusive hold the step, whatever passed before them). After the last step the canary is
scaled to the stable replica count and, once those pods are available, promoted.
``failureLimit`` consecutive Failed analyses roll back; a catastrophic one (nothing answered
well, or an error rate past ``catastrophicErrorRate``) rolls back at once. InsufficientData is
not a failure unless it lasts ``insufficientDataDeadlineSeconds``; then every further one is.
Inconclusive (Prometheus down, a query error) changes no counter: it holds the step, never
promotes, never rolls back, and says so in the ``Progressing`` condition. An analysis window
never reaches back before the current step began (:func:`analysis_window`).

Manual commands are annotations whose *value* is a token (a timestamp, a counter, anything new):
a command applies once, when its token differs from the one last seen (kept in the state).
``trtops.dev/abort`` rolls back now; ``trtops.dev/promote`` promotes now (skipping remaining steps
and analysis gates); ``trtops.dev/pause`` freezes the step timer (analysis keeps running, so a
breach still rolls back); ``trtops.dev/resume`` lifts a pause and also releases a
``pauseUntilPromoted`` step to the next step. Precedence within one reconcile:
abort > promote > pause > resume. Tokens present when an attempt starts are history, not
commands for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from trtops_operator.canary.analysis import Breach, Check, RevisionMetrics, Verdict, VerdictKind
from trtops_operator.canary.routers import canary_replicas, router_kind
from trtops_operator.models import RolloutSpec

__all__ = [
    "ANNOTATION_PREFIX",
    "COMMANDS",
    "AnalysisRecord",
    "CanaryEvent",
    "CanaryState",
    "Condition",
    "Decision",
    "Options",
    "Phase",
    "RollbackReport",
    "analysis_due",
    "analysis_window",
    "decide",
    "needs_new_attempt",
    "options_from_spec",
    "start",
]

ANNOTATION_PREFIX = "trtops.dev/"
Command = Literal["abort", "promote", "pause", "resume"]
COMMANDS: tuple[Command, ...] = ("abort", "promote", "pause", "resume")  # precedence order
Phase = Literal["Progressing", "Promoting", "Promoted", "RolledBack"]
TERMINAL: frozenset[str] = frozenset({"Promoted", "RolledBack"})
HISTORY_LIMIT = 10
IDLE_REQUEUE_SECONDS = 60.0
PROMOTING_REQUEUE_SECONDS = 5.0


# --- serialisation helpers ------------------------------------------------------------------


def _ts(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_ts(s: Any) -> dt.datetime | None:
    if s is None:
        return None
    t = dt.datetime.fromisoformat(str(s))
    if t.tzinfo is None:
        raise ValueError(f"timestamp without a timezone: {s!r}")
    return t.astimezone(dt.UTC)


def _metrics(m: RevisionMetrics | None) -> dict[str, Any] | None:
    return None if m is None else m.to_json()


def _parse_metrics(d: Any) -> RevisionMetrics | None:
    return None if d is None else RevisionMetrics.from_json(d)


def _rounded(m: RevisionMetrics | None) -> RevisionMetrics | None:
    """Round before storing, so what the state holds is exactly what JSON round-trips."""
    if m is None:
        return None

    def r(x: float | None, nd: int) -> float | None:
        return None if x is None else round(float(x), nd)

    return RevisionMetrics(
        requests=round(m.requests, 1),
        qps=r(m.qps, 3),
        p50_ms=r(m.p50_ms, 3),
        p99_ms=r(m.p99_ms, 3),
        error_rate=r(m.error_rate, 6),
        client_error_rate=r(m.client_error_rate, 6),
    )


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisRecord:
    """One analysis as kept in ``status.canary.history`` (the last few)."""

    at: dt.datetime
    step_index: int
    verdict: VerdictKind
    reason: str
    canary: RevisionMetrics | None = None
    stable: RevisionMetrics | None = None
    latency_ratio: float | None = None
    checks: tuple[Check, ...] = ()
    weight: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _ts(self.at),
            "step": self.step_index,
            "weight": self.weight,
            "verdict": self.verdict,
            "reason": self.reason,
            "canary": _metrics(self.canary),
            "stable": _metrics(self.stable),
            "latencyRatio": self.latency_ratio,
            "checks": [c.to_json() for c in self.checks],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AnalysisRecord:
        at = _parse_ts(d["at"])
        assert at is not None
        return cls(
            at=at,
            step_index=int(d["step"]),
            verdict=d["verdict"],
            reason=str(d.get("reason", "")),
            canary=_parse_metrics(d.get("canary")),
            stable=_parse_metrics(d.get("stable")),
            latency_ratio=d.get("latencyRatio"),
            checks=tuple(Check.from_json(c) for c in d.get("checks") or []),
            weight=None if d.get("weight") is None else int(d["weight"]),
        )


@dataclass(frozen=True)
class RollbackReport:
    """Why a canary was rolled back: for the ``RolledBack`` condition, the Event and status."""

    reason: Literal["AnalysisFailed", "CatastrophicFailure", "InsufficientData", "Aborted"]
    message: str
    at: dt.datetime
    breaches: tuple[Breach, ...] = ()
    canary: RevisionMetrics | None = None
    stable: RevisionMetrics | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "message": self.message,
            "at": _ts(self.at),
            "breaches": [b.to_json() for b in self.breaches],
            "canary": _metrics(self.canary),
            "stable": _metrics(self.stable),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RollbackReport:
        at = _parse_ts(d["at"])
        assert at is not None
        return cls(
            reason=d["reason"],
            message=str(d["message"]),
            at=at,
            breaches=tuple(Breach.from_json(b) for b in d.get("breaches") or []),
            canary=_parse_metrics(d.get("canary")),
            stable=_parse_metrics(d.get("stable")),
        )


@dataclass(frozen=True)
class CanaryState:
    """Everything the machine knows, JSON-serialisable into ``status.canary``."""

    revision: str
    key: str
    stable_revision: str
    generation: int
    started_at: dt.datetime
    phase: Phase = "Progressing"
    step_index: int = 0
    weight: int = 0
    step_started_at: dt.datetime | None = None
    step_passed: bool = False
    step_released: bool = False  # a ``resume`` ended this step's indefinite pause
    paused: bool = False
    paused_at: dt.datetime | None = None
    consecutive_failures: int = 0
    insufficient_since: dt.datetime | None = None
    last_analysis_at: dt.datetime | None = None
    last_verdict: VerdictKind | None = None
    last_reason: str = ""
    canary_metrics: RevisionMetrics | None = None
    stable_metrics: RevisionMetrics | None = None
    history: tuple[AnalysisRecord, ...] = ()
    commands: Mapping[str, str] = field(default_factory=dict)
    rollback: RollbackReport | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "key": self.key,
            "stableRevision": self.stable_revision,
            "generation": self.generation,
            "startedAt": _ts(self.started_at),
            "phase": self.phase,
            "stepIndex": self.step_index,
            "weight": self.weight,
            "stepStartedAt": _ts(self.step_started_at),
            "stepPassed": self.step_passed,
            "stepReleased": self.step_released,
            "paused": self.paused,
            "pausedAt": _ts(self.paused_at),
            "consecutiveFailures": self.consecutive_failures,
            "insufficientDataSince": _ts(self.insufficient_since),
            "lastAnalysisAt": _ts(self.last_analysis_at),
            "lastVerdict": self.last_verdict,
            "lastReason": self.last_reason,
            "canaryMetrics": _metrics(self.canary_metrics),
            "stableMetrics": _metrics(self.stable_metrics),
            "history": [h.to_json() for h in self.history],
            "commands": dict(self.commands),
            "rollback": None if self.rollback is None else self.rollback.to_json(),
            "message": self.message,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CanaryState:
        """Read ``status.canary`` back; raises ``ValueError``/``KeyError`` on a garbled one."""
        started = _parse_ts(d["startedAt"])
        if started is None:
            raise ValueError("status.canary.startedAt is empty")
        phase = d.get("phase", "Progressing")
        if phase not in ("Progressing", "Promoting", "Promoted", "RolledBack"):
            raise ValueError(f"unknown canary phase {phase!r}")
        rollback = d.get("rollback")
        return cls(
            revision=str(d["revision"]),
            key=str(d.get("key", "")),
            stable_revision=str(d.get("stableRevision", "")),
            generation=int(d.get("generation", 0)),
            started_at=started,
            phase=phase,
            step_index=int(d.get("stepIndex", 0)),
            weight=int(d.get("weight", 0)),
            step_started_at=_parse_ts(d.get("stepStartedAt")),
            step_passed=bool(d.get("stepPassed", False)),
            step_released=bool(d.get("stepReleased", False)),
            paused=bool(d.get("paused", False)),
            paused_at=_parse_ts(d.get("pausedAt")),
            consecutive_failures=int(d.get("consecutiveFailures", 0)),
            insufficient_since=_parse_ts(d.get("insufficientDataSince")),
            last_analysis_at=_parse_ts(d.get("lastAnalysisAt")),
            last_verdict=d.get("lastVerdict"),
            last_reason=str(d.get("lastReason", "")),
            canary_metrics=_parse_metrics(d.get("canaryMetrics")),
            stable_metrics=_parse_metrics(d.get("stableMetrics")),
            history=tuple(AnalysisRecord.from_json(h) for h in d.get("history") or []),
            commands={str(k): str(v) for k, v in (d.get("commands") or {}).items()},
            rollback=None if rollback is None else RollbackReport.from_json(rollback),
            message=str(d.get("message", "")),
        )


# --- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Condition:
    """A condition without timestamps; the reconciler stamps and merges it."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """``canary_weight``/``canary_replicas`` are levels (apply them every time); ``promote`` and
    ``rollback`` are edges (true once, on the transition; carrying them out twice is harmless)."""

    state: CanaryState
    canary_weight: int
    canary_replicas: int
    promote: bool = False
    rollback: RollbackReport | None = None
    events: tuple[CanaryEvent, ...] = ()
    conditions: tuple[Condition, ...] = ()
    requeue_after: float | None = None

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight


@dataclass(frozen=True)
class Options:
    """Settings the spec model does not carry (yet): see :func:`options_from_spec`."""

    insufficient_data_deadline_seconds: int | None = None
    history_limit: int = HISTORY_LIMIT


def options_from_spec(rollout: RolloutSpec) -> Options:
    """Read ``analysis.insufficientDataDeadlineSeconds`` once the model has it."""
    deadline = getattr(rollout.analysis, "insufficient_data_deadline_seconds", None)
    return Options(insufficient_data_deadline_seconds=deadline)


# --- entry points ---------------------------------------------------------------------------


def _commands_in(annotations: Mapping[str, str] | None) -> dict[str, str]:
    ann = annotations or {}
    return {c: str(ann[ANNOTATION_PREFIX + c]) for c in COMMANDS if ANNOTATION_PREFIX + c in ann}


def start(
    rollout: RolloutSpec,
    *,
    revision: str,
    key: str,
    stable_revision: str,
    generation: int,
    now: dt.datetime,
    annotations: Mapping[str, str] | None = None,
) -> CanaryState:
    """A fresh attempt at step 0. Command tokens already on the resource are recorded as seen,
    so a ``promote`` written for an earlier revision does not promote this one."""
    first = rollout.steps[0]
    return CanaryState(
        revision=revision,
        key=key,
        stable_revision=stable_revision,
        generation=generation,
        started_at=now,
        step_started_at=now,
        weight=first.set_weight,
        commands=_commands_in(annotations),
        message=f"step 1/{len(rollout.steps)}: weight {first.set_weight}",
    )


def needs_new_attempt(state: CanaryState | None, *, revision: str, generation: int) -> bool:
    """A different revision starts a new attempt; so does a new spec generation after a
    rollback (that is how a user retries). A running canary is never restarted by an edit."""
    if state is None or state.revision != revision:
        return True
    return state.phase == "RolledBack" and generation > state.generation


def _analysis_anchor(state: CanaryState) -> dt.datetime:
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
    elapsed = (now - _analysis_anchor(state)).total_seconds()
    return elapsed >= rollout.analysis.interval_seconds


def decide(
    rollout: RolloutSpec,
    state: CanaryState,
    *,
    now: dt.datetime,
    stable_replicas: int,
    canary_available: int = 0,
    verdict: Verdict | None = None,
    annotations: Mapping[str, str] | None = None,
    options: Options | None = None,
) -> Decision:
    """One step of the machine; see the module docstring for the rules."""
    return _Machine(rollout, options or options_from_spec(rollout), now, stable_replicas).run(
        state, canary_available, verdict, annotations
    )


# --- the machine ----------------------------------------------------------------------------


class _Machine:
    def __init__(
        self, rollout: RolloutSpec, options: Options, now: dt.datetime, stable_replicas: int
    ) -> None:
        self.rollout = rollout
        self.options = options
        self.now = now
        self.replicas = max(stable_replicas, 0)
        self.events: list[CanaryEvent] = []
        self.kind = router_kind(rollout.traffic_router)

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(CanaryEvent(type_, reason, message))

    def run(
        self,
        s: CanaryState,
        canary_available: int,
        verdict: Verdict | None,
        annotations: Mapping[str, str] | None,
    ) -> Decision:
        if s.phase in TERMINAL:
            return self._finish(s)
        s, cmds = self._take_commands(s, annotations)
        if "abort" in cmds:
            report = RollbackReport(
                "Aborted",
                f"aborted by {ANNOTATION_PREFIX}abort={cmds['abort']} at weight {s.weight}",
                self.now,
                canary=s.canary_metrics,
                stable=s.stable_metrics,
            )
            return self._rollback(s, report)
        if "promote" in cmds and s.phase == "Progressing":
            self.event(
                "Normal",
                "PromoteRequested",
                f"{ANNOTATION_PREFIX}promote={cmds['promote']}: promoting {s.revision} now",
            )
            s = replace(s, phase="Promoting", paused=False, paused_at=None)
        if "pause" in cmds and not s.paused and s.phase == "Progressing":
            s = replace(s, paused=True, paused_at=self.now)
            self.event("Normal", "Paused", f"canary {s.revision} paused at weight {s.weight}")
        if "resume" in cmds:
            s = self._resume(s)
        if verdict is not None and self.rollout.analysis is not None:
            s, failed = self._record(s, verdict)
            if failed is not None:
                return self._rollback(s, failed)
        if s.phase == "Progressing" and not s.paused:
            s = self._advance(s)
        if s.phase == "Promoting":
            return self._promoting(s, canary_available)
        return self._progressing(s)

    # -- commands --

    def _take_commands(
        self, s: CanaryState, annotations: Mapping[str, str] | None
    ) -> tuple[CanaryState, dict[str, str]]:
        current = _commands_in(annotations)
        new = {c: tok for c, tok in current.items() if s.commands.get(c) != tok}
        if new:
            s = replace(s, commands={**s.commands, **new})
        return s, new

    def _resume(self, s: CanaryState) -> CanaryState:
        if s.paused:
            frozen = self.now - (s.paused_at or self.now)
            start = (s.step_started_at or self.now) + frozen  # paused time does not count
            self.event("Normal", "Resumed", f"canary {s.revision} resumed at weight {s.weight}")
            return replace(s, paused=False, paused_at=None, step_started_at=start)
        step = self.rollout.steps[s.step_index] if s.step_index < len(self.rollout.steps) else None
        if step is not None and step.pause_until_promoted and s.phase == "Progressing":
            self.event(
                "Normal", "Resumed", f"canary {s.revision}: step {s.step_index + 1} released"
            )
            return replace(s, step_released=True)
        return s

    # -- analysis --

    def _record(self, s: CanaryState, v: Verdict) -> tuple[CanaryState, RollbackReport | None]:
        record = AnalysisRecord(
            self.now,
            s.step_index,
            v.kind,
            v.reason,
            _rounded(v.canary),
            _rounded(v.stable),
            None if v.latency_ratio is None else round(v.latency_ratio, 4),
            v.checks,
            s.weight,
        )
        history = (*s.history, record)[-self.options.history_limit :]
        s = replace(
            s,
            last_analysis_at=self.now,
            last_verdict=v.kind,
            last_reason=v.reason,
            history=history,
            canary_metrics=record.canary or s.canary_metrics,
            stable_metrics=record.stable or s.stable_metrics,
        )
        assert self.rollout.analysis is not None
        limit = self.rollout.analysis.failure_limit
        if v.kind == "Passed":
            return replace(
                s, consecutive_failures=0, insufficient_since=None, step_passed=True
            ), None
        if v.kind == "Inconclusive":
            if s.history[-2:-1] and s.history[-2].verdict == "Inconclusive":
                return s, None
            self.event(
                "Warning", "AnalysisInconclusive", f"holding at weight {s.weight}: {v.reason}"
            )
            return s, None
        breaches = v.breaches
        reason: Literal["AnalysisFailed", "CatastrophicFailure", "InsufficientData"] = (
            "AnalysisFailed"
        )
        if v.kind == "InsufficientData":
            since = s.insufficient_since or self.now
            s = replace(s, insufficient_since=since)
            deadline = self.options.insufficient_data_deadline_seconds
            if deadline is None or (self.now - since).total_seconds() < deadline:
                return s, None
            reason = "InsufficientData"
            measured = v.canary.requests if v.canary is not None else 0.0
            breaches = (Breach("minRequests", measured, self.rollout.analysis.min_requests),)
        else:
            s = replace(s, insufficient_since=None)
        failures = s.consecutive_failures + 1
        s = replace(s, consecutive_failures=failures, step_passed=False)
        text = v.reason if v.kind == "Failed" else "; ".join(b.describe() for b in breaches)
        if v.kind == "Failed" and v.catastrophic:
            message = f"catastrophic failure, not waiting for failureLimit {limit}: {v.reason}"
            return s, RollbackReport(
                "CatastrophicFailure",
                message,
                self.now,
                breaches,
                s.canary_metrics,
                s.stable_metrics,
            )
        if failures < limit:
            self.event("Warning", "AnalysisFailed", f"{failures}/{limit}: {text}")
            return s, None
        message = f"{failures} consecutive failed analyses (failureLimit {limit}): {text}"
        return s, RollbackReport(
            reason, message, self.now, breaches, s.canary_metrics, s.stable_metrics
        )

    # -- steps --

    def _step_done(self, s: CanaryState) -> bool:
        step = self.rollout.steps[s.step_index]
        if step.pause_until_promoted and not s.step_released:
            return False
        if not step.pause_until_promoted and step.pause_seconds:
            started = s.step_started_at or s.started_at
            if (self.now - started).total_seconds() < step.pause_seconds:
                return False
        if self.rollout.analysis is None or s.weight == 0:
            return True
        # The evidence rule: a Passed in this step, and nothing but Passed since.
        return s.step_passed and s.last_verdict == "Passed"

    def _advance(self, s: CanaryState) -> CanaryState:
        steps = self.rollout.steps
        s = replace(s, step_index=min(s.step_index, len(steps) - 1))  # the spec lost steps
        for _ in range(len(steps)):
            if not self._step_done(s):
                break
            nxt = s.step_index + 1
            if nxt >= len(steps):
                self.event("Normal", "StepsComplete", f"canary {s.revision} passed every step")
                return replace(s, phase="Promoting")
            weight = steps[nxt].set_weight
            self.event("Normal", "CanaryStep", f"step {nxt + 1}/{len(steps)}: weight {weight}")
            s = replace(
                s,
                step_index=nxt,
                weight=weight,
                step_started_at=self.now,
                step_passed=False,
                step_released=False,
            )
        return s

    # -- outputs --

    def _requeue(self, s: CanaryState) -> float:
        waits = [IDLE_REQUEUE_SECONDS]
        if self.rollout.analysis is not None:
            due = _analysis_anchor(s) + dt.timedelta(seconds=self.rollout.analysis.interval_seconds)
            waits.append((due - self.now).total_seconds())
        step = self.rollout.steps[s.step_index]
        if (
            s.phase == "Progressing"
            and not s.paused
            and step.pause_seconds
            and not step.pause_until_promoted
        ):
            end = (s.step_started_at or s.started_at) + dt.timedelta(seconds=step.pause_seconds)
            waits.append((end - self.now).total_seconds())
        return max(1.0, min(waits))

    def _progressing(self, s: CanaryState) -> Decision:
        n = len(self.rollout.steps)
        step = self.rollout.steps[s.step_index]
        where = f"step {s.step_index + 1}/{n}, weight {s.weight}"
        if s.paused:
            reason, msg = "CanaryPaused", f"{where}: paused by {ANNOTATION_PREFIX}pause"
        elif s.last_verdict == "Inconclusive":
            reason, msg = (
                "AnalysisInconclusive",
                f"{where}: holding, analysis inconclusive: {s.last_reason}",
            )
        elif step.pause_until_promoted and not s.step_released:
            reason = "AwaitingPromotion"
            msg = (
                f"{where}: experiment until {ANNOTATION_PREFIX}promote or {ANNOTATION_PREFIX}abort"
            )
        elif s.last_verdict == "InsufficientData":
            reason, msg = "InsufficientData", f"{where}: {s.last_reason}"
        else:
            reason = "CanaryProgressing"
            msg = where + (
                f"; last analysis {s.last_verdict}: {s.last_reason}" if s.last_verdict else ""
            )
        s = replace(s, message=msg)
        return Decision(
            state=s,
            canary_weight=s.weight,
            canary_replicas=canary_replicas(self.kind, self.replicas, s.weight),
            events=tuple(self.events),
            conditions=(
                Condition("Progressing", "True", reason, msg),
                Condition(
                    "RolledBack", "False", "CanaryInProgress", f"canary {s.revision} in progress"
                ),
            ),
            requeue_after=self._requeue(s),
        )

    def _promoting(self, s: CanaryState, available: int) -> Decision:
        full = max(self.replicas, 1)
        if available >= full:
            msg = f"revision {s.revision} promoted to stable (was {s.stable_revision or 'none'})"
            self.event("Normal", "Promoted", msg)
            s = replace(s, phase="Promoted", weight=100, paused=False, message=msg)
            return replace(self._finish(s), promote=True)
        msg = f"promoting {s.revision}: scaling canary to {full} pods ({available} available)"
        s = replace(s, message=msg)
        return Decision(
            state=s,
            canary_weight=s.weight,
            canary_replicas=full,
            events=tuple(self.events),
            conditions=(Condition("Progressing", "True", "Promoting", msg),),
            requeue_after=min(PROMOTING_REQUEUE_SECONDS, self._requeue(s)),
        )

    def _rollback(self, s: CanaryState, report: RollbackReport) -> Decision:
        s = replace(
            s, phase="RolledBack", weight=0, paused=False, rollback=report, message=report.message
        )
        self.event("Warning", "RolledBack", f"canary {s.revision} rolled back: {report.message}")
        return replace(self._finish(s), rollback=report)

    def _finish(self, s: CanaryState) -> Decision:
        """Terminal phases: hold their level forever (until a new attempt)."""
        if s.phase == "Promoted":
            return Decision(
                state=s,
                canary_weight=100,
                canary_replicas=self.replicas,
                events=tuple(self.events),
                conditions=(
                    Condition("Progressing", "False", "CanaryPromoted", s.message),
                    Condition("RolledBack", "False", "CanaryPromoted", s.message),
                ),
            )
        report = s.rollback
        reason = report.reason if report is not None else "RolledBack"
        return Decision(
            state=s,
            canary_weight=0,
            canary_replicas=0,
            events=tuple(self.events),
            conditions=(
                Condition("Progressing", "False", "RolledBack", s.message),
                Condition("RolledBack", "True", reason, s.message),
            ),
        )
