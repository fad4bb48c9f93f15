"""The experiment step of a reconcile, pure: build each variant, serve it beside the baseline at
its fixed weight, and turn the latest measurement into ``status.experiment``.

An experiment runs only while the engine is settled: the stable revision is the one the spec
asks for and no canary is in flight (the canary owns the route meanwhile). Its phases:

    Building   variant plans are being built (one build per precision: a variant's build key
               is the engine's own with another precision, so a plan that exists is reused)
    Starting   every variant is built; its pods are coming up (no traffic yet)
    Running    the route gives each variant its weight; measured every ``intervalSeconds``
    Completed  ``durationSeconds`` passed, or every arm answered ``minRequests`` (and every
               variant had ``minShadowSamples`` rows compared, if the rule needs them): the results
               and the recommendation stay in status; variants are taken out of the route and
               their pods removed
    Waiting    a new revision or a canary is in flight: variants are out of the route until
               the engine settles (a new baseline revision starts a new experiment)
    Failed     a variant's build failed (its message says why); the others are not served

Nothing is rolled back during an experiment: the only thing that moves is a variant breaching
``hardSlo``, which is stopped (weight 0) at once and kept in the results as stopped.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trtops_worker.cachekey import canonical_json

from trtops_operator import cost, keys, manifests
from trtops_operator.builds import Builds, decide_builds
from trtops_operator.canary import routers as canary_routers
from trtops_operator.config import OperatorConfig
from trtops_operator.decision import BuildOutcome, Event, RouterAction
from trtops_operator.experiment.measurement import (
    Measured,
    parse_time,
    readable,
    record_measurement,
)
from trtops_operator.models import Experiment, TrtEngineSpec
from trtops_operator.observation import Observed
from trtops_operator.serving import Serving, apply_if_changed, plan_ref
from trtops_operator.status_model import EngineView, PlanRecord

__all__ = [
    "VARIANT_LABEL",
    "ExperimentStep",
    "decide_experiment",
    "experiment_key",
    "shadow_service",
    "variant_service",
]

# On variant pods (the shadow Service selects them; a selector matches values, not keys).
VARIANT_LABEL = "trtops.dev/experiment-variant"
FINAL = ("Completed",)
STARTING_RECHECK_SECONDS = 5.0


def variant_service(engine: str, variant: str) -> str:
    """The Service the route weighs for one variant."""
    return f"{engine}-x-{variant}"


def shadow_service(engine: str) -> str:
    """The Service in front of every variant's pods, where the baseline's pods send shadow
    requests (its answers name their revision, so one address serves every variant)."""
    return f"{engine}-experiment"


def experiment_key(spec: Experiment, baseline_revision: str) -> str:
    """One experiment: its spec and its baseline. A change of either starts a new one."""
    record = {"experiment": spec.model_dump(mode="json"), "baseline": baseline_revision}
    return hashlib.sha256(canonical_json(record).encode("ascii")).hexdigest()[:12]


@dataclass
class ExperimentStep:
    create: list[dict[str, Any]] = field(default_factory=list)
    adopt: list[str] = field(default_factory=list)
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)  # variant Deployments serving must not delete
    router: RouterAction | None = None  # the route's weights, while variants serve
    owned: list[str] = field(default_factory=list)  # experiment Services any route must drop
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    outcomes: list[BuildOutcome] = field(default_factory=list)
    waiting_on: list[str] = field(default_factory=list)
    requeue_after: float | None = None


def _variant_spec(spec: TrtEngineSpec, precision: str) -> TrtEngineSpec:
    """The engine's spec with another precision, and no experiment of its own."""
    build = spec.build.model_copy(update={"precision": precision})
    return spec.model_copy(update={"build": build, "experiment": None})


def _router(
    spec: TrtEngineSpec, engine: str, desired: dict[str, int], owned: Sequence[str]
) -> RouterAction | None:
    router = spec.rollout.traffic_router if spec.rollout else None
    if router is None or canary_routers.router_kind(router) not in ("gatewayAPI", "istio"):
        return None
    return RouterAction(
        kind=canary_routers.router_kind(router),
        name=router.gateway_api.http_route
        if router.gateway_api
        else (router.istio.virtual_service if router.istio else ""),
        routes=tuple(router.istio.routes) if router.istio else (),
        desired=desired,
        owned=tuple(owned),
    )


def stale_services(engine: str, observed: Observed) -> list[str]:
    """Experiment Services that exist (to take out of the route and delete)."""
    prefixes = (f"{engine}-x-", shadow_service(engine))
    return [n for n in observed.services if n.startswith(prefixes)]


def _restamp(obj: dict[str, Any]) -> dict[str, Any]:
    """A built object changed after :mod:`manifests` stamped it: stamp its hash again."""
    obj = copy.deepcopy(obj)
    annotations = obj["metadata"]["annotations"]
    annotations.pop(manifests.HASH_ANNOTATION, None)
    if not annotations:
        del obj["metadata"]["annotations"]
    digest = manifests.spec_hash(obj)
    obj["metadata"].setdefault("annotations", {})[manifests.HASH_ANNOTATION] = digest
    return obj


def _nulled(old: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the keys only ``old`` has set to None: status is merge-patched, and a key
    left out would keep the previous experiment's value."""
    return {**dict.fromkeys(k for k in (old or {}) if k not in new), **new}


def decide_experiment(
    view: EngineView,
    engine: manifests.Engine,
    builds: Builds,
    serving: Serving,
    observed: Observed,
    config: OperatorConfig,
    now: str,
    measured: Measured | None,
    pins: Mapping[str, str] | None = None,
) -> ExperimentStep:
    """What ``spec.experiment`` asks for this pass; see the module docstring for the phases."""
    out = ExperimentStep()
    spec, exp = engine.spec, engine.spec.experiment
    old: dict[str, Any] = dict(getattr(view.status, "experiment", None) or {})
    stale = stale_services(engine.name, observed)
    out.owned = list(stale)
    if exp is None:
        out.delete += [("Service", n) for n in stale]
        if old and old.get("phase") not in FINAL and old.get("phase") != "Ended":
            out.status = _nulled(
                old,
                {
                    **old,
                    "phase": "Ended",
                    "message": "spec.experiment was removed before the experiment ended",
                },
            )
        elif old:
            out.status = old
        return out

    baseline = builds.revision
    key = experiment_key(exp, baseline)
    # A record that does not read (a hand edit) starts the experiment over instead of wedging it.
    same = old.get("key") == key and readable(old)
    recorded = {v.get("name"): v for v in (old.get("variants") or [])} if same else {}
    status: dict[str, Any] = {
        "key": key,
        "baseline": {"name": "baseline", "precision": spec.build.precision, "revision": baseline},
        # what the report states beside the figures: the rule, the backend, the currency
        "rule": {
            **exp.recommend.model_dump(mode="json", by_alias=True, exclude_none=True),
            "minShadowSamples": exp.min_shadow_samples,
        },
        "backend": spec.serving.backend,
    }
    prices = cost.prices_for(spec, config.prices)
    if prices is not None:
        status["currency"] = prices.currency
    for k in ("startedAt", "endsAt", "lastMeasuredAt", "results", "completedAt", "recommendation"):
        if same and old.get(k) is not None:
            status[k] = old[k]

    # Build every variant (recorded plans reused) in every phase: building takes longest.
    variants: list[dict[str, Any]] = []
    ready_refs: dict[str, tuple[str, list[PlanRecord], manifests.Engine]] = {}
    failed: list[str] = []
    building = False
    for v in exp.variants:
        vspec = _variant_spec(spec, v.precision)
        vengine = manifests.Engine(engine.name, engine.namespace, engine.uid, vspec)
        rec = recorded.get(v.name) or {}
        plans = [PlanRecord.model_validate(p) for p in rec.get("plans") or []]
        vview = view.model_copy(update={"status": view.status.model_copy(update={"plans": plans})})
        vb = decide_builds(vview, vengine, observed, config, pins)
        out.create += vb.create
        out.adopt += vb.adopt
        out.outcomes += vb.outcomes
        out.events += vb.events
        out.waiting_on += [t.job for t in vb.building]
        entry: dict[str, Any] = {
            "name": v.name,
            "precision": v.precision,
            "weight": v.weight,
            "revision": vb.revision,
            "service": variant_service(engine.name, v.name),
            "plans": [p.to_json() for p in vb.plans],
        }
        if rec.get("stopped"):
            entry["stopped"] = rec["stopped"]
        if vb.failed:
            t = vb.failed[0]
            entry["state"] = "Failed"
            entry["message"] = (
                f"{t.failure.reason}: {t.failure.message}"[:1024] if t.failure else "build failed"
            )
            failed.append(v.name)
        elif vb.building:
            entry["state"] = "Building"
            entry["message"] = vb.building[0].note[:1024]
            building = True
        else:
            entry["state"] = "Built"
            ready_refs[v.name] = (vb.revision, vb.plans, vengine)
        variants.append(entry)
    status["variants"] = variants

    settled = (
        builds.ready
        and serving.stable_revision == baseline
        and not serving.in_canary
        and serving.rolled_out(baseline)
    )
    done = same and old.get("phase") in FINAL
    owned = [engine.name, f"{engine.name}-canary", *stale] + [e["service"] for e in variants]
    owned = list(dict.fromkeys(owned))
    out.owned = owned[2:]
    if done:
        status |= {"phase": old["phase"], "message": old.get("message", "")}
        out.delete += [("Service", n) for n in stale]
        out.status = _nulled(old, status)
        return out
    if failed:
        status |= {
            "phase": "Failed",
            "message": f"variant build failed: {', '.join(failed)} (see variants[].message);"
            " fix the spec or remove spec.experiment",
        }
    elif building:
        status |= {"phase": "Building", "message": "building the variants' plans"}
    elif not settled:
        status |= {
            "phase": "Waiting",
            "message": "waiting for the engine to settle: the spec's revision must be stable"
            " with no canary in flight",
        }
    if failed or building or not settled:
        out.delete += [("Service", n) for n in stale]
        out.status = _nulled(old, status)
        return out

    # Serve every variant beside the baseline.
    replicas = serving.replicas
    ready_all = True
    for entry in variants:
        rev, plans, vengine = ready_refs[entry["name"]]
        for p in plans:
            ref = plan_ref(vengine.spec, p, pins)  # the variant's precision
            product = ref.target
            name = keys.serving_name(f"{engine.name}-{rev}", product)
            dep = manifests.render_deployment(
                vengine, ref, name=name, revision=rev, config=config, replicas=replicas
            )
            dep["spec"]["template"]["metadata"]["labels"][VARIANT_LABEL] = "true"
            dep = _restamp(dep)
            have = observed.deployments.get(name)
            apply_if_changed(out.apply, dep, have.spec_hash if have is not None else None)
            out.keep.add(name)
            if (
                have is None
                or have.available < min(replicas, 1)
                or have.spec_hash != manifests.stamped_hash(dep)
            ):
                ready_all = False
        svc = manifests.render_service(engine, revision=rev, name=entry["service"])
        apply_if_changed(out.apply, svc, observed.services.get(entry["service"]))
    shadow = manifests.render_service(engine, name=shadow_service(engine.name))
    shadow["spec"]["selector"][VARIANT_LABEL] = "true"
    shadow = _restamp(shadow)
    apply_if_changed(out.apply, shadow, observed.services.get(shadow_service(engine.name)))
    wanted = {shadow_service(engine.name)} | {e["service"] for e in variants}
    out.delete += [("Service", n) for n in stale if n not in wanted]

    if "startedAt" not in status:
        if not ready_all:
            status |= {"phase": "Starting", "message": "variant pods are starting"}
            out.requeue_after = STARTING_RECHECK_SECONDS
            out.router = _router(spec, engine.name, {engine.name: 100}, owned)
            out.status = _nulled(old, status)
            return out
        status["startedAt"] = now
        if exp.duration_seconds is not None:
            ends = parse_time(now) + dt.timedelta(seconds=exp.duration_seconds)
            status["endsAt"] = ends.strftime("%Y-%m-%dT%H:%M:%SZ")
        out.events.append(
            Event(
                "Normal",
                "ExperimentStarted",
                "variants "
                + ", ".join(f"{e['name']} ({e['precision']}) {e['weight']}%" for e in variants)
                + " beside the baseline",
            )
        )

    status |= {"phase": "Running", "message": "variants serve at their fixed weights"}
    if measured is not None and measured.key == key:
        if measured.error:
            status["message"] = (
                f"variants serve at their fixed weights; last measurement failed: {measured.error}"[
                    :1024
                ]
            )
        else:
            record_measurement(exp, status, measured, variants, now, out.events)
    # The route: fixed weights; a stopped variant gets none.
    serving_variants = [e for e in variants if not e.get("stopped")]
    if status.get("phase") == "Completed":
        serving_variants = []
        out.keep.clear()
        out.apply = [o for o in out.apply if o["kind"] != "Deployment"]
    desired = {e["service"]: e["weight"] for e in serving_variants}
    desired[engine.name] = 100 - sum(desired.values())
    out.router = _router(spec, engine.name, desired, owned)
    if status.get("phase") == "Running":
        left = [float(exp.interval_seconds)]
        if status.get("endsAt"):
            left.append(max((parse_time(status["endsAt"]) - parse_time(now)).total_seconds(), 1.0))
        out.requeue_after = float(min(left))
    out.status = _nulled(old, status)
    return out
