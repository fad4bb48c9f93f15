"""What one reconcile decided: the one object the pure reconcile steps return and the I/O side
(``k8s.apply_decision``, the router write, metrics, the work queue) carries out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BuildOutcome", "Decision", "Event", "RouterAction"]


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    transition: bool = False  # a condition changed (folded into one Event per reconcile)
    job: str = ""  # told only by the reconcile that created this Job (not one that got 409)
    folded: bool = False  # carries condition transitions (fold_transitions)


@dataclass(frozen=True)
class BuildOutcome:
    """One build that reached an outcome, with what its metrics are labelled by."""

    outcome: Literal["succeeded", "cached", "reused", "failed"]
    job: str
    precision: str
    target: str
    build_seconds: float | None = None  # the worker's ``buildSeconds``, for successes


@dataclass(frozen=True)
class RouterAction:
    """Give the operator's own Services these percentages on the user's route object."""

    kind: str  # gatewayAPI | istio
    name: str
    desired: Mapping[str, int]
    owned: tuple[str, ...]
    routes: tuple[str, ...] = ()


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)  # Jobs, created if absent
    adopt: list[str] = field(default_factory=list)  # Jobs this engine must co-own
    apply: list[dict[str, Any]] = field(default_factory=list)  # server-side applied
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: dict[str, Any] | None = None  # the status merge patch, when something changed
    events: list[Event] = field(default_factory=list)
    outcomes: list[BuildOutcome] = field(default_factory=list)  # builds that finished
    invalid: str | None = None  # the spec cannot be used: a message for the user
    router: RouterAction | None = None  # traffic weights to set on the user's route object
    requeue_after: float | None = None  # come back then even if nothing changes (canary timers)
    waiting_on: list[str] = field(default_factory=list)  # build Jobs still running for us
