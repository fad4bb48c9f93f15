"""The status step, pure: the conditions and status fields that say where the engine stands.

``Built`` (every target has a plan), ``Ready`` (a revision serves), ``Progressing`` (a new
revision is on its way), ``Degraded`` (something needs a person) and, during and after a canary,
the canary machine's own conditions (``RolledBack``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trtops_operator.builds import Builds
from trtops_operator.conditions import ConditionStatus, set_condition
from trtops_operator.decision import Event
from trtops_operator.observation import Stuck
from trtops_operator.serving import Serving
from trtops_operator.status_model import Condition, EngineStatus, EngineView

__all__ = ["StatusStep", "decide_status"]


def _serving_stuck(serving: Serving) -> tuple[str, Stuck] | None:
    """The first pod of a revision that should serve that cannot progress: (revision, why)."""
    for pod in sorted(serving.observed.serving_pods, key=lambda p: p.name):
        if pod.stuck is not None and pod.revision in serving.names_by_rev:
            message = f"revision {pod.revision}: pod {pod.name}: {pod.stuck.message}"
            return pod.revision, Stuck(pod.stuck.reason, message)
    return None


def _finished(record: Mapping[str, Any]) -> dict[str, Any]:
    """The last attempt's record once no canary runs (promoted, or the spec back on stable):
    readable (phase, analyses, rollback report) but naming no canary, at weight 0, as Argo
    Rollouts sets the canary weight to 0 once fully promoted; ``kubectl get trt`` shows an empty
    CANARY and WEIGHT 0 instead of the promoted revision as a canary."""
    # null, not absent: a merge patch keeps the keys it does not name
    return {**record, "revision": None, "plans": None, "weight": 0}


@dataclass
class StatusStep:
    status: EngineStatus
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def decide_status(view: EngineView, builds: Builds, serving: Serving, now: str) -> StatusStep:
    """Conditions and the status fields for this pass."""
    old = view.status
    revision, failed, building = builds.revision, builds.failed, builds.building
    stable_now, cd = serving.stable_revision, serving.canary

    def cond(type_: str, status: ConditionStatus, reason: str, message: str) -> Condition:
        return set_condition(
            old.conditions, type_, status, reason, message, generation=view.generation, now=now
        )

    build_stuck = builds.stuck
    serve_stuck = _serving_stuck(serving)
    if failed:
        f = failed[0]
        assert f.failure is not None
        built = cond(
            "Built",
            "False",
            f.failure.reason,
            f"{f.label}: {f.failure.category}: {f.failure.message}",
        )
    elif building:
        reason = build_stuck.stuck.reason if build_stuck and build_stuck.stuck else "Building"
        built = cond("Built", "False", reason, "; ".join(f"{t.label}: {t.note}" for t in building))
    else:
        built = cond(
            "Built", "True", "Built", f"{len(builds.plans)} plan(s) built for revision {revision}"
        )
    if stable_now == revision and serving.rolled_out(revision):
        progressing = cond(
            "Progressing", "False", "RolloutComplete", f"revision {revision} serves 100%"
        )
    elif failed:
        progressing = cond(
            "Progressing", "False", "BuildFailed", f"revision {revision} cannot be built"
        )
    elif building:
        progressing = cond("Progressing", "True", "Building", f"building revision {revision}")
    else:
        progressing = cond("Progressing", "True", "RollingOut", f"rolling out revision {revision}")
    refused = [
        p
        for p in serving.observed.serving_pods
        if p.incompatible is not None and p.revision in (revision, stable_now)
    ]
    refusal = (
        f"pod {refused[0].name} ({refused[0].target}, revision {refused[0].revision}) refused"
        f" its plan: {refused[0].incompatible.message}"
        if refused and refused[0].incompatible is not None
        else ""
    )
    # What stops a revision, in short: the build's refusal, or a stuck pod's reason.
    blocker = built.reason if failed or build_stuck else None
    if blocker is None and refused and refused[0].revision != stable_now:
        blocker = "PlanIncompatible"
    if blocker is None and serve_stuck is not None and serve_stuck[0] != stable_now:
        blocker = serve_stuck[1].reason
    # Ready is "requests are served": any available pod of the stable revision. Fewer than
    # desired (a lost pod, a node drained within the PDB) is its own reason, not Ready=False.
    available, desired = serving.counts(stable_now)
    if available > 0:
        msg = f"revision {stable_now} serving with {available}/{desired} pods available"
        if cd is not None and not serving.promoted:
            msg += f"; canary {revision} at {serving.canary_weight}%"
        elif stable_now != revision and failed:
            msg += f"; revision {revision} refused: {blocker}"
        elif stable_now != revision:
            msg += f"; revision {revision} " + (f"stuck: {blocker}" if blocker else "not ready yet")
        reason = "Serving" if available >= desired else "ReducedCapacity"
        ready = cond("Ready", "True", reason, msg)
    elif failed and not stable_now:
        ready = cond("Ready", "False", "BuildFailed", built.message)
    elif refused:
        ready = cond("Ready", "False", "PlanIncompatible", refusal)
    elif serve_stuck is not None:
        ready = cond("Ready", "False", serve_stuck[1].reason, serve_stuck[1].message)
    elif build_stuck is not None:
        ready = cond("Ready", "False", built.reason, built.message)
    elif building or not serving.names_by_rev:
        ready = cond("Ready", "False", "Building", "no plan serves yet")
    else:
        ready = cond("Ready", "False", "Starting", "serving pods are not available yet")
    if failed:
        degraded = cond("Degraded", "True", "BuildFailed", built.message)
    elif refused:
        degraded = cond("Degraded", "True", "PlanIncompatible", refusal)
    elif serve_stuck is not None:
        degraded = cond("Degraded", "True", serve_stuck[1].reason, serve_stuck[1].message)
    elif build_stuck is not None:
        degraded = cond("Degraded", "True", built.reason, built.message)
    elif stable_now and stable_now in serving.names_by_rev and available == 0:
        degraded = cond(
            "Degraded", "True", "Unavailable", f"revision {stable_now} has no available pod"
        )
    else:
        degraded = cond("Degraded", "False", "AsExpected", "")
    conditions = {c.type: c for c in (built, ready, progressing, degraded)}
    step = StatusStep(EngineStatus())
    if cd is not None:
        for c in cd.conditions:
            conditions[c.type] = cond(c.type, c.status, c.reason, c.message)
        step.events += [Event(e.type, e.reason, e.message) for e in cd.events]
        step.requeue_after = cd.requeue_after
    elif old.condition("RolledBack") is not None:
        conditions["RolledBack"] = cond(
            "RolledBack", "False", "NotRolledBack", f"revision {revision} is not rolled back"
        )
    canary = None
    if cd is not None and serving.promoted:
        canary = _finished(cd.state.to_json())
    elif cd is not None:
        canary = {
            **cd.state.to_json(),
            "weight": serving.canary_weight,
            "plans": [p.identity().to_json() for p in builds.plans],
        }
    elif old.canary and stable_now == revision:
        canary = _finished(old.canary)
    step.status = EngineStatus(
        observed_generation=view.generation,
        revision=revision,
        conditions=list(conditions.values()),
        plans=builds.plans,
        stable=serving.stable,
        canary=canary,
        last_good_revision=stable_now or old.last_good_revision or None,
    )
    return step
