"""Level-based reconciliation, pure: (resource, what exists) -> one :class:`Decision`.

A short chain of steps, one module per concern (after argo-rollouts' ``rolloutCanary``)::

    EngineView.parse       status_model  the body, parsed once
    TrtEngineSpec          models        the spec (invalid: conditions.invalid, nothing else)
    decide_pins            compat        GPU products pinned after a PlanIncompatible refusal
    decide_rebuild         rebuild       a scheduled rebuild: its Jobs, its regression gate
    decide_builds          builds        Jobs to create or adopt, plans, build outcomes
    decide_serving         serving       Deployments, the canary's turn, where stable is
    decide_routing         routing       Services, route weights, PodDisruptionBudget
    decide_experiment      experiment    spec.experiment's variants, their weights and results
    decide_status          status        conditions and status fields
    finish_status          conditions    the status patch and its transition Events

Nothing here talks to the API. The handlers gather what exists from kopf's in-memory indexes
(:mod:`trtops_operator.observation`), call :func:`decide`, and ``driver`` carries the decision
out. Deciding from the full observed state every time, instead of from the event that arrived,
is what lets a restarted operator or a missed event converge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from trtops_operator import installer_policy, manifests
from trtops_operator.builds import decide_builds, retry_storage_faults
from trtops_operator.canary.analysis import Verdict
from trtops_operator.compat import decide_pins
from trtops_operator.conditions import finish_status, fold_transitions, invalid
from trtops_operator.config import OperatorConfig
from trtops_operator.decision import BuildOutcome, Decision, Event, RouterAction
from trtops_operator.experiment.measurement import Measured
from trtops_operator.experiment.step import decide_experiment
from trtops_operator.models import TrtEngineSpec
from trtops_operator.observation import DeploymentObs, JobObs, Observed, PodObs
from trtops_operator.rebuild import decide_rebuild
from trtops_operator.routing import decide_routing
from trtops_operator.serving import decide_serving
from trtops_operator.status import decide_status
from trtops_operator.status_model import EngineView

__all__ = [  # the chain's entry, and the types of its signature
    "BuildOutcome",
    "Decision",
    "DeploymentObs",
    "Event",
    "JobObs",
    "Observed",
    "PodObs",
    "RouterAction",
    "decide",
]


def decide(
    body: Mapping[str, Any],
    observed: Observed,
    config: OperatorConfig,
    now: str,
    *,
    verdict: Verdict | None = None,
    measured: Measured | None = None,
) -> Decision:
    """Everything one reconcile of ``body`` (a TrtEngine) should do, given what exists at
    ``now`` (RFC 3339). ``verdict``: the canary analysis run for this pass (if one was due);
    ``measured``: the experiment's measurement taken for this pass (if one was due)."""
    view = EngineView.parse(body)
    try:
        spec = TrtEngineSpec.model_validate(view.spec)
    except ValidationError as exc:
        message = f"spec is invalid: {exc.errors()[0].get('msg', exc)}"[:1024]
        decision = invalid(view, message, now)
    else:
        problem = installer_policy.policy_problem(spec, config)
        if problem is not None:
            decision = invalid(view, f"spec is not allowed here: {problem}"[:1024], now)
        else:
            decision = _decide(view, spec, observed, config, now, verdict, measured)
    decision.events = fold_transitions(decision.events)
    return decision


def _decide(
    view: EngineView,
    spec: TrtEngineSpec,
    observed: Observed,
    config: OperatorConfig,
    now: str,
    verdict: Verdict | None,
    measured: Measured | None = None,
) -> Decision:
    engine = manifests.Engine(name=view.name, namespace=view.namespace, uid=view.uid, spec=spec)
    pins = decide_pins(
        view.status.compute_capability_pins, observed.serving_pods, view.status.revision
    )
    rebuild = decide_rebuild(view, engine, observed, config, now, pins.pins)
    builds = decide_builds(view, engine, observed, config, pins.pins, rebuild.current)
    retry_now, retry_later = retry_storage_faults(view, builds, observed, now)
    serving = decide_serving(view, engine, builds, observed, config, now, verdict, pins.pins)
    routing = decide_routing(engine, builds.revision, serving)
    exp = decide_experiment(
        view, engine, builds, serving, observed, config, now, measured, pins.pins
    )
    router = exp.router or routing.router
    if exp.router is None and routing.router is not None and exp.owned:  # drop variants' refs
        router = replace(routing.router, owned=(*routing.router.owned, *exp.owned))
    step = decide_status(view, builds, serving, now)
    step.status.compute_capability_pins = pins.pins or None
    step.status.experiment = exp.status
    rebuild.apply(step.status)
    decision = Decision(
        create=builds.create + exp.create + rebuild.create,
        adopt=builds.adopt + exp.adopt,
        apply=serving.apply + routing.apply + exp.apply,
        delete=[d for d in serving.delete if d[1] not in exp.keep]
        + routing.delete
        + exp.delete
        + [("Job", j) for j in retry_now],
        events=pins.events + builds.events + exp.events + rebuild.events + step.events,
        outcomes=builds.outcomes + exp.outcomes,
        router=router,
        requeue_after=min(
            (
                t
                for t in (step.requeue_after, retry_later, exp.requeue_after, rebuild.requeue_after)
                if t is not None
            ),
            default=None,
        ),
        waiting_on=[t.job for t in builds.building] + exp.waiting_on + rebuild.waiting_on,
    )
    finish_status(decision, view, step.status)
    return decision
