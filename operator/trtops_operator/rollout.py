"""The reconcile's one entry into the canary package: read the recorded canary from a typed
status, say whether an analysis is due, and take one turn of the canary machine.

Pure. The canary package (``trtops_operator.canary``) owns the state machine, the analysis and
the shape of ``status.canary``; this module is all the rest of the operator knows of it.
"""

from __future__ import annotations

import datetime as dt

from trtops_operator.canary import steps as canary_steps
from trtops_operator.canary.analysis import Verdict
from trtops_operator.models import RolloutSpec, TrtEngineSpec
from trtops_operator.observation import Observed
from trtops_operator.status_model import EngineStatus, EngineView

__all__ = [
    "CanaryTurn",
    "analysis_due",
    "analysis_window",
    "canary_in_flight",
    "canary_turn",
    "recorded_canary",
]

CanaryTurn = canary_steps.CanaryTurn  # one turn's outcome: weights, replicas, conditions, events


def parse_now(now: str) -> dt.datetime:
    return dt.datetime.fromisoformat(now.replace("Z", "+00:00"))


def recorded_canary(status: EngineStatus) -> canary_steps.CanaryState | None:
    """The canary recorded in status; None when there is none, only a finished attempt's record
    (which names no revision) or a garbled one (start over rather than guess)."""
    if not status.canary or not status.canary.get("revision"):
        return None
    try:
        return canary_steps.CanaryState.from_json(status.canary)
    except (KeyError, TypeError, ValueError):
        return None


def canary_in_flight(status: EngineStatus) -> canary_steps.CanaryState | None:
    """The canary recorded in status, when one is still stepping (for the analysis to run)."""
    state = recorded_canary(status)
    return None if state is None or state.phase in ("Promoted", "RolledBack") else state


def analysis_due(rollout: RolloutSpec, state: canary_steps.CanaryState, now: dt.datetime) -> bool:
    """Whether the canary in flight needs a new analysis from Prometheus now."""
    return rollout.analysis is not None and canary_steps.analysis_due(rollout, state, now)


def analysis_window(state: canary_steps.CanaryState, now: dt.datetime) -> float:
    """How far back (seconds) the next analysis may look: never before the step began."""
    return canary_steps.analysis_window(state, now)


def stable_pods(spec: TrtEngineSpec, observed: Observed, prefix: str) -> int:
    """The stable revision's pod count the canary is sized against: the spec's replicas, or
    with autoscaling what its HPAs run now (each Deployment's replicas, set by its HPA)."""
    auto = spec.serving.autoscaling
    if auto is None:
        return spec.serving.replicas
    counts = [d.replicas for n, d in observed.deployments.items() if n.startswith(prefix)]
    return max([auto.min_replicas, *counts])


def canary_turn(
    spec: TrtEngineSpec,
    view: EngineView,
    *,
    revision: str,
    stable_revision: str,
    now: str,
    observed: Observed,
    verdict: Verdict | None,
) -> CanaryTurn:
    """One turn of the canary machine for ``revision`` against ``stable_revision``; ``verdict``
    is the analysis measured for this pass (None: none was due)."""
    assert spec.rollout is not None
    now_dt = parse_now(now)
    state = recorded_canary(view.status)
    if state is None or canary_steps.needs_new_attempt(
        state, revision=revision, generation=view.generation
    ):
        state = canary_steps.start(
            spec.rollout,
            revision=revision,
            key=revision,
            stable_revision=stable_revision,
            generation=view.generation,
            now=now_dt,
            annotations=view.annotations,
        )
        verdict = None  # measured for another attempt
    prefix = f"{view.name}-{revision}"
    canary_available = min(
        (d.available for n, d in observed.deployments.items() if n.startswith(prefix)), default=0
    )
    return canary_steps.decide(
        spec.rollout,
        state,
        now=now_dt,
        stable_replicas=stable_pods(spec, observed, f"{view.name}-{stable_revision}"),
        canary_available=canary_available,
        verdict=verdict,
        annotations=view.annotations,
    )
