"""Scheduled rebuilds, pure: when ``spec.build.schedule`` fires, build the spec's plans again
(fresh calibration data from the request sample, the operator's current worker image), measure
each new plan against the serving one in its build Job, and let the new plans replace the
serving ones only when the regression gate finds them not worse (docs/experiments.md,
"Scheduled rebuilds").

A rebuild is named by the schedule time it fired for (``2026-12-01T03:00:00Z``), and that name
is part of its plans' build keys (``keys.build_key(rebuild=...)``), so its Jobs are new ones.
``status.rebuild`` records, level-based (an operator restarted anywhere resumes from it):

- ``lastScheduleTime``: the last schedule time handled (when the schedule was first seen,
  before it fired);
- ``candidate``: the rebuild being built and measured;
- ``current``: the rebuild the spec's plans come from (absent: none yet). Only an accepted
  rebuild becomes ``current``; the revision (``keys.revision_of``) then changes and the normal
  canary rolls the new plans out;
- ``lastResult``: ``{rebuild, verdict: Accepted|Unchanged|Refused|Failed, message}``;
- ``nextScheduleTime``: when it fires next.

A time the schedule fired while no operator ran fires once, at the next pass (as a CronJob with
no ``startingDeadlineSeconds`` catching up one run). A rebuild starts only while the stable
revision is the one the spec asks for and no canary is in flight; until then it waits. The
``Rebuilt`` condition says where it stands, with the gate's figures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from trtops_operator import keys, manifests
from trtops_operator.conditions import ConditionStatus, set_condition
from trtops_operator.config import OperatorConfig
from trtops_operator.decision import Event
from trtops_operator.models import next_fire
from trtops_operator.observation import Observed
from trtops_operator.regression import GateVerdict, judge, recorded_comparison
from trtops_operator.results import BuildFailure, BuildSuccess, parse_result
from trtops_operator.rollout import canary_in_flight
from trtops_operator.status_model import Condition, EngineStatus, EngineView

__all__ = ["CONDITION", "RebuildStatus", "RebuildStep", "decide_rebuild", "latest_due"]

CONDITION = "Rebuilt"


class RebuildStatus(BaseModel):
    """``status.rebuild`` (see the module docstring)."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    last_schedule_time: str | None = None
    next_schedule_time: str | None = None
    current: str | None = None
    candidate: str | None = None
    last_result: dict[str, Any] | None = None

    @classmethod
    def parse(cls, raw: Any) -> RebuildStatus:
        try:
            return cls.model_validate(raw or {})
        except ValidationError:  # a hand edit: start over rather than wedge the reconcile
            return cls()

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _text(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def latest_due(schedule: str, after: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """The latest time ``schedule`` fires in ``(after, now]``; None when it does not. Times
    missed several times give the latest one only (one rebuild, not a burst)."""
    if next_fire(schedule, after) > now:
        return None
    latest = croniter(schedule, now + dt.timedelta(seconds=1)).get_prev(dt.datetime)
    assert isinstance(latest, dt.datetime)
    return latest.astimezone(dt.UTC)


@dataclass
class RebuildStep:
    """What the rebuild step decided: ``current`` goes into the build keys of the plans the
    spec asks for; the rest joins the pass's decision."""

    current: str | None = None
    status: RebuildStatus | None = None
    condition: Condition | None = None
    create: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    waiting_on: list[str] = field(default_factory=list)
    requeue_after: float | None = None
    recorded: tuple[str, ...] = ()  # the fields status.rebuild holds now

    def apply(self, status: EngineStatus) -> None:
        """Put ``status.rebuild`` and the ``Rebuilt`` condition into this pass's status. A field
        cleared this pass is written as null: a merge patch keeps the keys it does not name."""
        if self.status is not None:
            new = self.status.to_json()
            status.rebuild = {**dict.fromkeys(k for k in self.recorded if k not in new), **new}
        if self.condition is not None:
            status.conditions = [c for c in status.conditions if c.type != CONDITION]
            status.conditions.append(self.condition)


def _job_result(job: str, observed: Observed) -> BuildSuccess | BuildFailure | None:
    """The build Job's result; None while it runs (or before it exists)."""
    obs = observed.jobs.get(job)
    if obs is None:
        return None
    pods = sorted(observed.pods.get(job, ()), key=lambda p: (p.created, p.name))
    results = [r for r in (parse_result(p.message) for p in pods) if r is not None]
    success = next((r for r in reversed(results) if isinstance(r, BuildSuccess)), None)
    if success is not None:
        return success
    failure = next((r for r in reversed(results) if isinstance(r, BuildFailure)), None)
    if obs.failed:
        return failure or BuildFailure(
            "Job", obs.failure_reason or "JobFailed", obs.failure_message or "no result"
        )
    if obs.succeeded:
        return BuildFailure("Result", "ResultMissing", f"build Job {job} left no result")
    return None


def _ready_to_start(status: EngineStatus) -> str | None:
    """Why a due rebuild must wait (None: it may start now)."""
    built = status.condition("Built")
    if status.stable is None or not status.stable.revision:
        return "no revision serves yet"
    if status.stable.revision != status.revision or canary_in_flight(status) is not None:
        return "a rollout is in progress"
    if built is None or built.status != "True":
        return "the spec's plans are not built"
    return None


def decide_rebuild(
    view: EngineView,
    engine: manifests.Engine,
    observed: Observed,
    config: OperatorConfig,
    now: str,
    pins: Mapping[str, str] | None = None,
) -> RebuildStep:
    """The rebuild step of one pass (see the module docstring)."""
    spec = engine.spec
    schedule = spec.build.schedule
    raw = view.status.rebuild
    if schedule is None and raw is None:
        return RebuildStep()
    state = RebuildStatus.parse(raw)
    step = RebuildStep(current=state.current, status=state.model_copy(), recorded=tuple(raw or ()))
    new = step.status
    assert new is not None
    now_dt = _time(now)
    pins = pins or {}

    def cond(status: ConditionStatus, reason: str, message: str) -> None:
        step.condition = set_condition(
            view.status.conditions, CONDITION, status, reason, message,
            generation=view.generation, now=now,
        )  # fmt: skip

    waiting = ""
    if schedule is not None:
        anchor = _time(state.last_schedule_time) if state.last_schedule_time else now_dt
        new.last_schedule_time = _text(anchor)
        due = latest_due(schedule, anchor, now_dt) if new.candidate is None else None
        if due is not None:
            waiting = _ready_to_start(view.status) or ""
            if not waiting:
                new.candidate, new.last_schedule_time = _text(due), _text(due)
        upcoming = next_fire(schedule, _time(new.last_schedule_time))
        new.next_schedule_time = _text(upcoming)
        if new.candidate is None and not waiting:
            step.requeue_after = max((upcoming - now_dt).total_seconds(), 1.0)

    if new.candidate is not None:
        _candidate(view, engine, observed, config, pins, step, cond)
    if step.condition is None:
        _settled(new, schedule, waiting, cond)
    return step


def _candidate(
    view: EngineView,
    engine: manifests.Engine,
    observed: Observed,
    config: OperatorConfig,
    pins: Mapping[str, str],
    step: RebuildStep,
    cond: Any,
) -> None:
    """Create, watch and judge the candidate's build Jobs (one per target)."""
    new = step.status
    assert new is not None
    assert new.candidate is not None
    spec, token = engine.spec, new.candidate
    serving = {p.target: p for p in view.status.plans}
    gate_json = keys.gate_json(spec)
    verdicts: list[GateVerdict] = []
    unchanged = True
    running: list[str] = []
    for product in spec.target_products():
        label = keys.target_label(product)
        pin = pins.get(product) if product is not None else None
        key = keys.build_key(spec, product, config.worker_image, pin, rebuild=token)
        job = keys.job_name(key, spec.storage.claim_name, gate_json)
        plan = serving.get(label)
        result = _job_result(job, observed)
        if result is None:
            running.append(job)
            if job not in observed.jobs:
                step.create.append(
                    manifests.render_build_job(
                        engine, product, key, name=job, config=config,
                        compute_capability=pin, baseline=plan.path if plan else None,
                    )
                )  # fmt: skip
                step.events.append(
                    Event("Normal", "RebuildStarted", f"rebuild {token}: build Job {job} created")
                )
            continue
        if isinstance(result, BuildFailure):
            _finish(step, cond, "Failed", f"{label}: {result.reason}: {result.message}")
            return
        fields = result.result.model_dump(mode="json", by_alias=True, exclude_none=True)
        old = plan.to_json() if plan else {}
        unchanged = unchanged and old.get("artifactKey") == result.key
        verdict = judge(
            fields.get("comparison"), spec.build.regression_gate, label,
            recorded_comparison(fields, old) if old else None,
        )  # fmt: skip
        calibrated = (fields.get("dataSources") or {}).get("calibration")
        if calibrated:  # what the rebuild calibrated with: the request sample, or the file
            verdict = replace(verdict, message=f"{verdict.message} (calibration: {calibrated})")
        verdicts.append(verdict)
    if running:
        step.waiting_on = running
        cond(
            "Unknown", "Rebuilding", f"rebuild {token}: building and measuring {', '.join(running)}"
        )
        return
    message = "; ".join(v.message for v in verdicts)
    if unchanged:
        _finish(step, cond, "Unchanged", f"the rebuild gave the serving plans again: {message}")
    elif all(v.not_worse for v in verdicts):
        step.current = new.current = token
        _finish(step, cond, "Accepted", message)
    else:
        reason = next(v.reason for v in verdicts if not v.not_worse)
        _finish(step, cond, "Refused", message, reason=reason)


_VERDICTS: dict[str, tuple[ConditionStatus, str, Literal["Normal", "Warning"], str]] = {
    # verdict: condition status, condition reason, Event type, Event reason
    "Accepted": ("True", "NotWorse", "Normal", "RebuildAccepted"),
    "Unchanged": ("True", "Unchanged", "Normal", "RebuildUnchanged"),
    "Refused": ("False", "Regressed", "Warning", "RebuildRefused"),
    "Failed": ("False", "RebuildFailed", "Warning", "RebuildFailed"),
}


def _finish(step: RebuildStep, cond: Any, verdict: str, message: str, reason: str = "") -> None:
    new = step.status
    assert new is not None
    assert new.candidate is not None
    status, cond_reason, event_type, event_reason = _VERDICTS[verdict]
    text = f"rebuild {new.candidate}: {message}"
    if verdict == "Refused":
        text = f"rebuild {new.candidate} refused ({reason}), the serving plans stay: {message}"
    new.last_result = {"rebuild": new.candidate, "verdict": verdict, "message": text[:1024]}
    new.candidate = None
    step.events.append(Event(event_type, event_reason, text[:1024]))
    cond(status, cond_reason, text)


def _settled(new: RebuildStatus, schedule: str | None, waiting: str, cond: Any) -> None:
    """The condition between rebuilds: the last result stands, or what comes next."""
    last = new.last_result or {}
    verdict = str(last.get("verdict") or "")
    if verdict in _VERDICTS:
        status, reason, _, _ = _VERDICTS[verdict]
        message = str(last.get("message") or "")
        if waiting:
            message += f"; the next rebuild is due and waits: {waiting}"
        cond(status, reason, message)
    elif schedule is not None:
        message = f"next rebuild at {new.next_schedule_time}"
        cond("Unknown", "Scheduled", message + (f"; due, waiting: {waiting}" if waiting else ""))
