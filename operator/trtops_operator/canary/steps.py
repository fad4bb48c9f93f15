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
from dataclasses import replace
from typing import Literal

from trtops_operator.canary.analysis import Verdict
from trtops_operator.canary.gate import (
    analysis_anchor,
    analysis_due,
    analysis_window,
    record_verdict,
)
from trtops_operator.canary.routers import canary_replicas, router_kind
from trtops_operator.canary.state import (
    ANNOTATION_PREFIX,
    COMMANDS,
    TERMINAL,
    AnalysisRecord,
    CanaryCondition,
    CanaryEvent,
    CanaryState,
    CanaryTurn,
    Options,
    Phase,
    RollbackReport,
    commands_in,
    options_from_spec,
)
from trtops_operator.models import RolloutSpec

__all__ = [
    "ANNOTATION_PREFIX",
    "COMMANDS",
    "AnalysisRecord",
    "CanaryCondition",
    "CanaryEvent",
    "CanaryState",
    "CanaryTurn",
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

IDLE_REQUEUE_SECONDS = 60.0
PROMOTING_REQUEUE_SECONDS = 5.0


# --- entry points ---------------------------------------------------------------------------


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
        commands=commands_in(annotations),
        message=f"step 1/{len(rollout.steps)}: weight {first.set_weight}",
    )


def needs_new_attempt(state: CanaryState | None, *, revision: str, generation: int) -> bool:
    """A different revision starts a new attempt; so does a new spec generation after a
    rollback (that is how a user retries). A running canary is never restarted by an edit."""
    if state is None or state.revision != revision:
        return True
    return state.phase == "RolledBack" and generation > state.generation


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
) -> CanaryTurn:
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
    ) -> CanaryTurn:
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
            s, failed, events = record_verdict(self.rollout, self.options, self.now, s, verdict)
            self.events += events
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
        current = commands_in(annotations)
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
            due = analysis_anchor(s) + dt.timedelta(seconds=self.rollout.analysis.interval_seconds)
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

    def _progressing(self, s: CanaryState) -> CanaryTurn:
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
        return CanaryTurn(
            state=s,
            canary_weight=s.weight,
            canary_replicas=canary_replicas(self.kind, self.replicas, s.weight),
            events=tuple(self.events),
            conditions=(
                CanaryCondition("Progressing", "True", reason, msg),
                CanaryCondition(
                    "RolledBack", "False", "CanaryInProgress", f"canary {s.revision} in progress"
                ),
            ),
            requeue_after=self._requeue(s),
        )

    def _promoting(self, s: CanaryState, available: int) -> CanaryTurn:
        full = max(self.replicas, 1)
        if available >= full:
            msg = f"revision {s.revision} promoted to stable (was {s.stable_revision or 'none'})"
            self.event("Normal", "Promoted", msg)
            s = replace(s, phase="Promoted", weight=100, paused=False, message=msg)
            return replace(self._finish(s), promote=True)
        msg = f"promoting {s.revision}: scaling canary to {full} pods ({available} available)"
        s = replace(s, message=msg)
        return CanaryTurn(
            state=s,
            canary_weight=s.weight,
            canary_replicas=full,
            events=tuple(self.events),
            conditions=(CanaryCondition("Progressing", "True", "Promoting", msg),),
            requeue_after=min(PROMOTING_REQUEUE_SECONDS, self._requeue(s)),
        )

    def _rollback(self, s: CanaryState, report: RollbackReport) -> CanaryTurn:
        s = replace(
            s, phase="RolledBack", weight=0, paused=False, rollback=report, message=report.message
        )
        self.event("Warning", "RolledBack", f"canary {s.revision} rolled back: {report.message}")
        return replace(self._finish(s), rollback=report)

    def _finish(self, s: CanaryState) -> CanaryTurn:
        """Terminal phases: hold their level forever (until a new attempt)."""
        if s.phase == "Promoted":
            return CanaryTurn(
                state=s,
                canary_weight=100,
                canary_replicas=self.replicas,
                events=tuple(self.events),
                conditions=(
                    CanaryCondition("Progressing", "False", "CanaryPromoted", s.message),
                    CanaryCondition("RolledBack", "False", "CanaryPromoted", s.message),
                ),
            )
        report = s.rollback
        reason = report.reason if report is not None else "RolledBack"
        return CanaryTurn(
            state=s,
            canary_weight=0,
            canary_replicas=0,
            events=tuple(self.events),
            conditions=(
                CanaryCondition("Progressing", "False", "RolledBack", s.message),
                CanaryCondition("RolledBack", "True", reason, s.message),
            ),
        )
