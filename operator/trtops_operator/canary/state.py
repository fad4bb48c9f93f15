"""The canary's persisted state (``status.canary``) and what one turn of the machine returns.

Everything the machine knows is in :class:`CanaryState`, JSON-serialisable, so an operator
restarted mid-rollout reads it back and makes the same decision. Pure: no clock, no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trtops_operator.canary.analysis import Breach, Check, RevisionMetrics, VerdictKind
from trtops_operator.models import RolloutSpec

__all__ = [
    "ANNOTATION_PREFIX",
    "COMMANDS",
    "TERMINAL",
    "AnalysisRecord",
    "CanaryCondition",
    "CanaryEvent",
    "CanaryState",
    "CanaryTurn",
    "Options",
    "Phase",
    "RollbackReport",
    "commands_in",
    "options_from_spec",
    "rounded",
]

ANNOTATION_PREFIX = "trtops.dev/"
Command = Literal["abort", "promote", "pause", "resume"]
COMMANDS: tuple[Command, ...] = ("abort", "promote", "pause", "resume")  # precedence order
Phase = Literal["Progressing", "Promoting", "Promoted", "RolledBack"]
TERMINAL: frozenset[str] = frozenset({"Promoted", "RolledBack"})
HISTORY_LIMIT = 10


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


def rounded(m: RevisionMetrics | None) -> RevisionMetrics | None:
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
            # The step's weight (Argo Rollouts' SetWeight); the operator overwrites ``weight``
            # with the weight the router really carries (ActualWeight), e.g. 0 while the route
            # is unusable, so the machine reads its own from ``setWeight``.
            "setWeight": self.weight,
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
            weight=int(d.get("setWeight", d.get("weight", 0))),  # before setWeight: weight
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


def commands_in(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """The command annotations on the resource: command -> token."""
    ann = annotations or {}
    return {c: str(ann[ANNOTATION_PREFIX + c]) for c in COMMANDS if ANNOTATION_PREFIX + c in ann}


@dataclass(frozen=True)
class Options:
    """Settings the spec model does not carry (yet): see :func:`options_from_spec`."""

    insufficient_data_deadline_seconds: int | None = None
    history_limit: int = HISTORY_LIMIT


def options_from_spec(rollout: RolloutSpec) -> Options:
    """Read ``analysis.insufficientDataDeadlineSeconds`` once the model has it."""
    deadline = getattr(rollout.analysis, "insufficient_data_deadline_seconds", None)
    return Options(insufficient_data_deadline_seconds=deadline)


# --- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class CanaryCondition:
    """A condition without timestamps; the reconciler stamps and merges it."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


@dataclass(frozen=True)
class CanaryTurn:
    """``canary_weight``/``canary_replicas`` are levels (apply them every time); ``promote`` and
    ``rollback`` are edges (true once, on the transition; carrying them out twice is harmless)."""

    state: CanaryState
    canary_weight: int
    canary_replicas: int
    promote: bool = False
    rollback: RollbackReport | None = None
    events: tuple[CanaryEvent, ...] = ()
    conditions: tuple[CanaryCondition, ...] = ()
    requeue_after: float | None = None

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight
