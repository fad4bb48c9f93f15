"""Canary rollouts: the state machine, analysis, Prometheus and the traffic routers.

Pure modules (no I/O, no kopf, no clients): :mod:`.steps` (the machine), :mod:`.state` (its
persisted state and outputs), :mod:`.gate` (a step's analysis gate), :mod:`.analysis` (the
verdict) with :mod:`.promql`, :mod:`.samples`, :mod:`.verdict` and :mod:`.judge`, and
:mod:`.routers`. I/O: :mod:`.prometheus` (the aiohttp client) and :mod:`.runner` (analysis
runs); the route objects are written by :mod:`trtops_operator.k8s`, the operator's one
Kubernetes package. The reconcile enters the package through :mod:`trtops_operator.rollout`
only. ``docs/canary.md`` describes the behaviour users see.
"""

from trtops_operator.canary.analysis import RevisionMetrics, Selector, Verdict, evaluate
from trtops_operator.canary.errors import (
    CanaryError,
    RouterError,
    RouterMisconfigured,
    RouterUnavailable,
)
from trtops_operator.canary.routers import canary_replicas, effective_weight, router_kind
from trtops_operator.canary.steps import (
    CanaryState,
    CanaryTurn,
    Options,
    analysis_due,
    decide,
    needs_new_attempt,
    start,
)

__all__ = [
    "CanaryError",
    "CanaryState",
    "CanaryTurn",
    "Options",
    "RevisionMetrics",
    "RouterError",
    "RouterMisconfigured",
    "RouterUnavailable",
    "Selector",
    "Verdict",
    "analysis_due",
    "canary_replicas",
    "decide",
    "effective_weight",
    "evaluate",
    "needs_new_attempt",
    "router_kind",
    "start",
]
