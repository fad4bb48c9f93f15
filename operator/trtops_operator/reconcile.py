"""Level-based reconciliation, pure: (resource, what exists) -> what to do and the new status.

Nothing here talks to the API. ``handlers`` gathers what exists from kopf's in-memory indexes
(``summarize_*`` below are what those indexes store), calls :func:`decide`, and hands the
:class:`Decision` to ``k8s``. Deciding from the full observed state every time, instead of from
the event that arrived, is what lets a restarted operator or a missed event converge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from trtops_operator import builders, keys
from trtops_operator.canary import routers as canary_routers
from trtops_operator.canary import steps as canary_steps
from trtops_operator.canary.analysis import Verdict
from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec
from trtops_operator.results import BuildFailure, BuildSuccess, parse_result

__all__ = [
    "CONDITION_TYPES",
    "OWNER_KEY",
    "BuildOutcome",
    "Decision",
    "DeploymentObs",
    "JobObs",
    "Observed",
    "PodObs",
    "decide",
    "set_condition",
    "summarize_deployment",
    "summarize_job",
    "summarize_pod",
]

OWNER_KEY = "_recordedBy"  # in plan index entries: the uid of the engine whose status holds it
CONDITION_TYPES = ("Built", "Ready", "Progressing", "Degraded", "RolledBack")
STATUS_KEYS = (
    "observedGeneration",
    "revision",
    "conditions",
    "plans",
    "stable",
    "canary",
    "lastGoodRevision",
)
# Reasons that are part of normal progress: their transitions are Normal events, not Warnings.
PROGRESS_REASONS = {
    "Building",
    "RollingOut",
    "Starting",
    "Built",
    "Serving",
    "RolloutComplete",
    "AsExpected",
    "Pending",
}
STABLE_PLAN_FIELDS = ("target", "key", "job", "path", "precision", "backend")


# --- what the indexes store -------------------------------------------------------------------


@dataclass(frozen=True)
class JobObs:
    name: str
    owners: tuple[str, ...]  # uids of the TrtEngines that own the Job
    owner_names: tuple[str, ...] = ()
    succeeded: bool = False
    failed: bool = False
    failure_reason: str = ""
    failure_message: str = ""


@dataclass(frozen=True)
class PodObs:
    name: str
    job: str
    created: str
    phase: str
    message: str | None = None  # the build container's termination message


@dataclass(frozen=True)
class DeploymentObs:
    name: str
    engine: str
    spec_hash: str
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0  # desired (spec)
    status_replicas: int = 0
    updated: int = 0
    available: int = 0

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated >= self.replicas
            and self.available >= self.replicas
            and self.status_replicas <= self.replicas
        )


def _conditions(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (body.get("status") or {}).get("conditions") or []}


def _owners(body: Mapping[str, Any]) -> tuple[str, ...]:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return tuple(r["uid"] for r in refs if r.get("kind") == "TrtEngine" and r.get("uid"))


def summarize_job(body: Mapping[str, Any]) -> JobObs:
    conds = _conditions(body)
    status = body.get("status") or {}
    failed = conds.get("Failed", {}).get("status") == "True"
    complete = conds.get("Complete", {}).get("status") == "True" or bool(status.get("succeeded"))
    return JobObs(
        name=body["metadata"]["name"],
        owners=_owners(body),
        owner_names=tuple(
            r["name"]
            for r in body["metadata"].get("ownerReferences") or []
            if r.get("kind") == "TrtEngine"
        ),
        succeeded=complete and not failed,
        failed=failed,
        failure_reason=str(conds.get("Failed", {}).get("reason") or ""),
        failure_message=str(conds.get("Failed", {}).get("message") or ""),
    )


def summarize_pod(body: Mapping[str, Any]) -> PodObs:
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    message = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == "build":
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
    return PodObs(
        name=meta["name"],
        job=labels.get("batch.kubernetes.io/job-name") or labels.get("job-name", ""),
        created=str(meta.get("creationTimestamp") or ""),
        phase=str(status.get("phase") or ""),
        message=message,
    )


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentObs:
    meta = body["metadata"]
    status = body.get("status") or {}
    return DeploymentObs(
        name=meta["name"],
        engine=(meta.get("labels") or {}).get("trtops.dev/engine", ""),
        spec_hash=builders.stamped_hash(body),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int((body.get("spec") or {}).get("replicas", 1)),
        status_replicas=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
    )


@dataclass(frozen=True)
class Observed:
    """What exists, as far as one engine cares (all in the engine's namespace)."""

    jobs: Mapping[str, JobObs] = field(default_factory=dict)  # by Job name
    pods: Mapping[str, Sequence[PodObs]] = field(default_factory=dict)  # by Job name
    known_plans: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by Job name
    deployments: Mapping[str, DeploymentObs] = field(default_factory=dict)  # this engine's
    services: Mapping[str, str] = field(default_factory=dict)  # name -> spec hash
    pdbs: Mapping[str, str] = field(default_factory=dict)  # name -> spec hash


# --- what to do -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    transition: bool = False  # a condition changed (folded into one Event per reconcile)


@dataclass(frozen=True)
class BuildOutcome:
    """One build that reached an outcome, with what its metrics are labelled by."""

    outcome: Literal["succeeded", "cached", "reused", "failed"]
    job: str
    precision: str
    target: str
    build_seconds: float | None = None  # the worker's ``buildSeconds``, for successes


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)  # Jobs, created if absent
    adopt: list[str] = field(default_factory=list)  # Jobs this engine must co-own
    apply: list[dict[str, Any]] = field(default_factory=list)  # server-side applied
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: dict[str, Any] | None = None  # the operator's status fields, when they changed
    events: list[Event] = field(default_factory=list)
    outcomes: list[BuildOutcome] = field(default_factory=list)  # builds that finished
    invalid: str | None = None  # the spec cannot be used: a message for the user
    router: RouterAction | None = None  # traffic weights to set on the user's route object
    requeue_after: float | None = None  # come back then even if nothing changes (canary timers)


@dataclass(frozen=True)
class RouterAction:
    """Give the operator's own Services these percentages on the user's route object."""

    kind: str  # gatewayAPI | istio
    name: str
    desired: Mapping[str, int]
    owned: tuple[str, ...]
    routes: tuple[str, ...] = ()


def set_condition(
    old: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
) -> dict[str, Any]:
    """A condition; ``lastTransitionTime`` moves only when ``status`` does."""
    prev = next((c for c in old if c.get("type") == type_), None)
    changed = prev is None or prev.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:4096],
        "lastTransitionTime": now
        if changed or prev is None
        else prev.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


@dataclass(frozen=True)
class _Target:
    product: str | None
    key: str
    job: str
    state: Literal["built", "building", "failed"]
    plan: dict[str, Any] | None = None
    failure: BuildFailure | None = None
    note: str = ""


def _plan_record(
    product: str | None, key: str, job: str, fields: Mapping[str, Any]
) -> dict[str, Any]:
    return {**fields, "target": keys.target_label(product), "key": key, "job": job}


def _observe_target(
    engine: builders.Engine,
    product: str | None,
    key: str,
    job: str,
    old_plans: Mapping[str, Mapping[str, Any]],
    observed: Observed,
    config: OperatorConfig,
    decision: Decision,
) -> _Target:
    if job in old_plans:
        return _Target(product, key, job, "built", dict(old_plans[job]))
    known = observed.known_plans.get(job)
    if known is not None:
        fields = {k: v for k, v in known.items() if k != OWNER_KEY}
        if known.get(OWNER_KEY) == engine.uid:
            # Our own plan, seen in the index before our status caught up: not a reuse.
            return _Target(product, key, job, "built", _plan_record(product, key, job, fields))
        decision.outcomes.append(
            BuildOutcome(
                "reused",
                job,
                str(fields.get("precision") or engine.spec.build.precision),
                keys.target_label(product),
            )
        )
        plan = {**_plan_record(product, key, job, fields), "reused": True}
        return _Target(product, key, job, "built", plan)
    obs = observed.jobs.get(job)
    if obs is None:
        decision.create.append(builders.build_job(engine, product, key, name=job, config=config))
        return _Target(product, key, job, "building", note=f"build Job {job} created")
    if engine.uid not in obs.owners:
        decision.adopt.append(job)
    pods = sorted(observed.pods.get(job, ()), key=lambda p: (p.created, p.name))
    results = [r for r in (parse_result(p.message) for p in pods) if r is not None]
    success = next((r for r in reversed(results) if isinstance(r, BuildSuccess)), None)
    if success is not None:
        seconds = success.fields.get("buildSeconds")
        decision.outcomes.append(
            BuildOutcome(
                "cached" if success.fields.get("cached") else "succeeded",
                job,
                str(success.fields.get("precision") or engine.spec.build.precision),
                keys.target_label(product),
                float(seconds) if isinstance(seconds, int | float) else None,
            )
        )
        return _Target(
            product, key, job, "built", _plan_record(product, key, job, success.plan_fields())
        )
    failure = next((r for r in reversed(results) if isinstance(r, BuildFailure)), None)
    if obs.failed:
        if failure is None:
            failure = BuildFailure(
                "Job",
                obs.failure_reason or "JobFailed",
                obs.failure_message or f"build Job {job} failed without a result",
            )
        return _Target(product, key, job, "failed", failure=failure)
    if obs.succeeded and failure is not None:  # exit code 0 but a failure report: trust the report
        return _Target(product, key, job, "failed", failure=failure)
    if obs.succeeded:
        failure = BuildFailure(
            "Result",
            "ResultMissing",
            f"build Job {job} succeeded but its pod left no result in its termination message",
        )
        return _Target(product, key, job, "failed", failure=failure)
    note = f"build Job {job} running"
    if failure is not None:
        note += f"; a previous attempt failed: {failure.reason}: {failure.message}"
    return _Target(product, key, job, "building", note=note)


def _invalid(body: Mapping[str, Any], message: str, now: str) -> Decision:
    generation = int(body["metadata"].get("generation") or 0)
    old = (body.get("status") or {}).get("conditions") or []
    conds = [
        set_condition(
            old, "Ready", "False", "InvalidSpec", message, generation=generation, now=now
        ),
        set_condition(
            old, "Degraded", "True", "InvalidSpec", message, generation=generation, now=now
        ),
    ]
    decision = Decision(invalid=message)
    status = {"observedGeneration": generation, "conditions": conds}
    _finish_status(decision, body, status)
    return decision


def _finish_status(decision: Decision, body: Mapping[str, Any], status: dict[str, Any]) -> None:
    old = body.get("status") or {}
    if any(old.get(k) != status.get(k) for k in status):
        decision.status = status
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}
    for cond in status.get("conditions", []):
        prev = old_conds.get(cond["type"])
        if prev is not None and (prev.get("status"), prev.get("reason")) == (
            cond["status"],
            cond["reason"],
        ):
            continue
        bad = cond["reason"] not in PROGRESS_REASONS and (
            (cond["type"] == "Degraded" and cond["status"] == "True")
            or (cond["type"] in ("Built", "Ready") and cond["status"] == "False")
        )
        decision.events.append(
            Event(
                "Warning" if bad else "Normal",
                cond["reason"],
                f"{cond['type']}={cond['status']}: {cond['message']}".rstrip(": "),
                transition=True,
            )
        )


def refused(
    body: Mapping[str, Any], status: Mapping[str, Any] | None, message: str, now: str
) -> tuple[dict[str, Any], Event | None]:
    """What to report when the API server refused an object this reconcile built: the status
    that was about to be written (or the current one) with ``Degraded=True/ApplyRefused``, and
    a Warning unless the same refusal is already reported."""
    current = body.get("status") or {}
    base = dict(status if status is not None else current)
    old = current.get("conditions") or []
    generation = int(body["metadata"].get("generation") or 0)
    degraded = set_condition(
        old, "Degraded", "True", "ApplyRefused", message, generation=generation, now=now
    )
    conds = [c for c in base.get("conditions") or [] if c.get("type") != "Degraded"]
    base["conditions"] = [*conds, degraded]
    prev: Mapping[str, Any] = next((c for c in old if c.get("type") == "Degraded"), {})
    same = (prev.get("reason"), prev.get("message")) == ("ApplyRefused", degraded["message"])
    return base, None if same else Event("Warning", "ApplyRefused", message)


def fold_transitions(events: Sequence[Event]) -> list[Event]:
    """One Event per type and reconcile: every condition transition is still told, but inside the
    first explicit Event of its type (or one Event led by the first transition) rather than one
    API write each, which was most of the operator's writes at scale."""
    out = [e for e in events if not e.transition]
    for type_ in ("Warning", "Normal"):
        told = "; ".join(e.message for e in events if e.transition and e.type == type_)
        if not told:
            continue
        lead = next((i for i, e in enumerate(out) if e.type == type_), None)
        if lead is None:
            first = next(e for e in events if e.transition and e.type == type_)
            out.append(Event(type_, first.reason, told))
        else:
            e = out[lead]
            out[lead] = Event(e.type, e.reason, f"{e.message}; {told}")
    return out


def _parse_now(now: str) -> dt.datetime:
    return dt.datetime.fromisoformat(now.replace("Z", "+00:00"))


def _recorded_canary(body: Mapping[str, Any]) -> canary_steps.CanaryState | None:
    """The canary recorded in status; None when there is none or it is garbled (start over
    rather than guess)."""
    raw = (body.get("status") or {}).get("canary")
    if not raw:
        return None
    try:
        return canary_steps.CanaryState.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


def canary_in_flight(body: Mapping[str, Any]) -> canary_steps.CanaryState | None:
    """The canary recorded in status, when one is still stepping (for the analysis to run)."""
    state = _recorded_canary(body)
    return None if state is None or state.phase in ("Promoted", "RolledBack") else state


def _canary_step(
    spec: TrtEngineSpec,
    body: Mapping[str, Any],
    revision: str,
    stable_rev: str,
    generation: int,
    now: str,
    observed: Observed,
    engine: builders.Engine,
    verdict: Verdict | None,
) -> canary_steps.Decision:
    """One turn of the canary machine for ``revision`` against ``stable_rev``."""
    assert spec.rollout is not None
    now_dt = _parse_now(now)
    annotations = body["metadata"].get("annotations") or {}
    state = _recorded_canary(body)
    if state is None or canary_steps.needs_new_attempt(
        state, revision=revision, generation=generation
    ):
        state = canary_steps.start(
            spec.rollout,
            revision=revision,
            key=revision,
            stable_revision=stable_rev,
            generation=generation,
            now=now_dt,
            annotations=annotations,
        )
        verdict = None  # measured for another attempt
    prefix = f"{engine.name}-{revision}"
    canary_available = min(
        (d.available for n, d in observed.deployments.items() if n.startswith(prefix)), default=0
    )
    return canary_steps.decide(
        spec.rollout,
        state,
        now=now_dt,
        stable_replicas=spec.serving.replicas,
        canary_available=canary_available,
        verdict=verdict,
        annotations=annotations,
    )


def decide(
    body: Mapping[str, Any],
    observed: Observed,
    config: OperatorConfig,
    now: str,
    *,
    verdict: Verdict | None = None,
) -> Decision:
    """Everything one reconcile of ``body`` (a TrtEngine) should do, given what exists.
    ``verdict`` is the canary analysis the handler ran for this pass (if one was due)."""
    decision = _decide(body, observed, config, now, verdict=verdict)
    decision.events = fold_transitions(decision.events)
    return decision


@dataclass(frozen=True)
class _Builds:
    """Where each build target stands, for the revision the spec asks for."""

    targets: list[_Target]
    revision: str

    @property
    def plans(self) -> list[dict[str, Any]]:
        return [t.plan for t in self.targets if t.plan is not None]

    @property
    def failed(self) -> list[_Target]:
        return [t for t in self.targets if t.state == "failed"]

    @property
    def building(self) -> list[_Target]:
        return [t for t in self.targets if t.state == "building"]

    @property
    def ready(self) -> bool:
        return not self.failed and not self.building


@dataclass
class _Serving:
    """Which Deployments should run, and where the traffic is."""

    observed: Observed
    replicas: int
    wanted: dict[str, dict[str, Any]] = field(default_factory=dict)
    names_by_rev: dict[str, list[str]] = field(default_factory=dict)
    stable: dict[str, Any] = field(default_factory=dict)
    canary: canary_steps.Decision | None = None
    canary_mode: bool = False
    promoted: bool = False
    canary_weight: int = 0

    @property
    def stable_revision(self) -> str | None:
        rev = self.stable.get("revision")
        return str(rev) if rev else None

    def rolled_out(self, rev: str) -> bool:
        names = self.names_by_rev.get(rev) or []
        return bool(names) and all(
            (d := self.observed.deployments.get(n)) is not None
            and d.spec_hash == builders.stamped_hash(self.wanted[n])
            and d.rolled_out
            for n in names
        )

    def available(self, rev: str | None) -> bool:
        names = self.names_by_rev.get(rev or "") or []
        return bool(names) and all(
            (d := self.observed.deployments.get(n)) is not None and d.available >= self.replicas
            for n in names
        )


def _decide(
    body: Mapping[str, Any],
    observed: Observed,
    config: OperatorConfig,
    now: str,
    *,
    verdict: Verdict | None,
) -> Decision:
    meta = body["metadata"]
    try:
        spec = TrtEngineSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return _invalid(body, f"spec is invalid: {exc.errors()[0].get('msg', exc)}"[:1024], now)
    engine = builders.Engine(
        name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], spec=spec
    )
    decision = Decision()
    builds = _decide_builds(engine, body, observed, config, decision)
    serving = _decide_deployments(engine, body, builds, observed, config, now, verdict, decision)
    _decide_services(engine, builds.revision, serving, decision)
    _decide_status(engine, body, builds, serving, now, decision)
    return decision


def _apply_if_changed(decision: Decision, obj: dict[str, Any], have_hash: str | None) -> None:
    """Apply ``obj`` unless what exists carries its hash already (a steady state writes nothing)."""
    if have_hash != builders.stamped_hash(obj):
        decision.apply.append(obj)


def _decide_builds(
    engine: builders.Engine,
    body: Mapping[str, Any],
    observed: Observed,
    config: OperatorConfig,
    decision: Decision,
) -> _Builds:
    """One build per GPU target: reuse, wait for, create or adopt its Job, read its result."""
    spec = engine.spec
    old_status = body.get("status") or {}
    old_plans = {p.get("job", ""): p for p in old_status.get("plans") or []}
    gate = keys.gate_json(spec)
    targets = []
    for product in spec.target_products():
        key = keys.build_key(spec, product, config.worker_image)
        job = keys.job_name(key, spec.storage.claim_name, gate)
        targets.append(
            _observe_target(engine, product, key, job, old_plans, observed, config, decision)
        )
    builds = _Builds(targets, keys.revision_of(t.key for t in targets))
    old_built_reason = _conditions(body).get("Built", {}).get("reason")
    decision.outcomes += [
        BuildOutcome("failed", t.job, spec.build.precision, keys.target_label(t.product))
        for t in builds.failed
        if t.failure is not None and t.failure.reason != old_built_reason
    ]
    for t in targets:
        if t.state == "built" and t.plan and t.plan.get("reused") and t.job not in old_plans:
            decision.events.append(
                Event(
                    "Normal",
                    "PlanReused",
                    f"{keys.target_label(t.product)}: reused plan of Job {t.job}",
                )
            )
    decision.events += [
        Event("Normal", "BuildStarted", f"build Job {job['metadata']['name']} created")
        for job in decision.create
    ]
    return builds


def _decide_deployments(
    engine: builders.Engine,
    body: Mapping[str, Any],
    builds: _Builds,
    observed: Observed,
    config: OperatorConfig,
    now: str,
    verdict: Verdict | None,
    decision: Decision,
) -> _Serving:
    """Which revisions run with how many pods, the canary's turn, and when stable moves."""
    spec = engine.spec
    revision = builds.revision
    generation = int(body["metadata"].get("generation") or 0)
    serving = _Serving(observed, spec.serving.replicas)
    serving.stable = dict((body.get("status") or {}).get("stable") or {})
    stable_rev = serving.stable_revision
    serving.canary_mode = (
        bool(stable_rev) and stable_rev != revision and builds.ready and spec.rollout is not None
    )
    if serving.canary_mode and stable_rev is not None:
        serving.canary = _canary_step(
            spec, body, revision, stable_rev, generation, now, observed, engine, verdict
        )
    cd = serving.canary
    serving.promoted = cd is not None and cd.state.phase == "Promoted"

    # (revision, plans, replicas); the stable side keeps its full count for the whole canary.
    runs: list[tuple[str, Sequence[Mapping[str, Any]], int]] = []
    if stable_rev and stable_rev != revision:
        runs.append((stable_rev, serving.stable.get("plans") or [], serving.replicas))
    if builds.ready:
        runs.append(
            (revision, builds.plans, serving.replicas if cd is None else cd.canary_replicas)
        )
    for rev, rev_plans, rev_replicas in runs:
        for p in rev_plans:
            product = (
                None
                if p.get("target") == keys.CPU_TARGET and spec.serving.backend == "onnxruntime"
                else p.get("target")
            )
            ref = builders.PlanRef(
                target=product,
                key=str(p.get("key", "")),
                path=str(p.get("path", "")),
                precision=str(p.get("precision") or spec.build.precision),
                backend=str(p.get("backend") or spec.serving.backend),
            )
            name = keys.serving_name(f"{engine.name}-{rev}", product)
            serving.wanted[name] = builders.build_deployment(
                engine, ref, name=name, revision=rev, config=config, replicas=rev_replicas
            )
            serving.names_by_rev.setdefault(rev, []).append(name)

    for name, obj in serving.wanted.items():
        have = observed.deployments.get(name)
        _apply_if_changed(decision, obj, have.spec_hash if have is not None else None)
    decision.delete += [("Deployment", n) for n in observed.deployments if n not in serving.wanted]

    # The stable revision moves: at once for the first revision and for plain rollouts once the
    # new pods are available; after a canary only when the machine promotes it.
    plain = not serving.canary_mode and (revision == stable_rev or serving.rolled_out(revision))
    if builds.ready and (plain or serving.promoted):
        serving.stable = {
            "revision": revision,
            "weight": 100,
            "plans": [{k: p[k] for k in STABLE_PLAN_FIELDS if k in p} for p in builds.plans],
        }
    serving.canary_weight = cd.canary_weight if cd is not None and not serving.promoted else 0
    if serving.stable:
        serving.stable["weight"] = 100 - serving.canary_weight
    return serving


def _decide_services(
    engine: builders.Engine, revision: str, serving: _Serving, decision: Decision
) -> None:
    """One Service per engine (Gateway API and Istio weigh a stable-pinned one against the
    canary's), the route weights, and a PDB when there is more than one replica."""
    spec, observed = engine.spec, serving.observed
    kind = canary_routers.router_kind(spec.rollout.traffic_router) if spec.rollout else None
    in_canary = serving.canary_mode and not serving.promoted
    canary_svc = f"{engine.name}-canary"
    if serving.wanted:
        pinned = kind in ("gatewayAPI", "istio")
        main = builders.build_service(
            engine, revision=(serving.stable_revision or revision) if pinned else None
        )
        services = [main]
        if pinned and in_canary:
            services.append(builders.build_service(engine, revision=revision, name=canary_svc))
        for svc in services:
            _apply_if_changed(decision, svc, observed.services.get(svc["metadata"]["name"]))
        if canary_svc in observed.services and not (pinned and in_canary):
            decision.delete.append(("Service", canary_svc))
        if pinned and spec.rollout is not None:
            router = spec.rollout.traffic_router
            desired = {engine.name: 100 - serving.canary_weight}
            if in_canary:
                desired[canary_svc] = serving.canary_weight
            decision.router = RouterAction(
                kind=str(kind),
                name=router.gateway_api.http_route
                if router.gateway_api
                else (router.istio.virtual_service if router.istio else ""),
                routes=tuple(router.istio.routes) if router.istio else (),
                desired=desired,
                owned=(engine.name, canary_svc),
            )
        if serving.replicas > 1:
            _apply_if_changed(decision, builders.build_pdb(engine), observed.pdbs.get(engine.name))
    if engine.name in observed.pdbs and not (serving.wanted and serving.replicas > 1):
        decision.delete.append(("PodDisruptionBudget", engine.name))


def _decide_status(
    engine: builders.Engine,
    body: Mapping[str, Any],
    builds: _Builds,
    serving: _Serving,
    now: str,
    decision: Decision,
) -> None:
    """Conditions and the status fields, written only when they differ from what is there."""
    old_status = body.get("status") or {}
    old_conds = old_status.get("conditions") or []
    generation = int(body["metadata"].get("generation") or 0)
    revision, failed, building = builds.revision, builds.failed, builds.building
    stable_now, cd = serving.stable_revision, serving.canary

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return set_condition(
            old_conds, type_, status, reason, message, generation=generation, now=now
        )

    if failed:
        f = failed[0]
        assert f.failure is not None
        built = cond(
            "Built",
            "False",
            f.failure.reason,
            f"{keys.target_label(f.product)}: {f.failure.category}: {f.failure.message}",
        )
    elif building:
        built = cond("Built", "False", "Building", "; ".join(t.note for t in building))
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
    if serving.available(stable_now):
        msg = f"revision {stable_now} serving"
        if cd is not None and not serving.promoted:
            msg += f"; canary {revision} at {serving.canary_weight}%"
        elif stable_now != revision:
            msg += f"; revision {revision} not ready yet"
        ready = cond("Ready", "True", "Serving", msg)
    elif failed and not stable_now:
        ready = cond("Ready", "False", "BuildFailed", built["message"])
    elif building or not serving.names_by_rev:
        ready = cond("Ready", "False", "Building", "no plan serves yet")
    else:
        ready = cond("Ready", "False", "Starting", "serving pods are not available yet")
    if failed:
        degraded = cond("Degraded", "True", "BuildFailed", built["message"])
    elif stable_now and stable_now in serving.names_by_rev and not serving.available(stable_now):
        degraded = cond(
            "Degraded",
            "True",
            "Unavailable",
            f"revision {stable_now} has too few available pods",
        )
    else:
        degraded = cond("Degraded", "False", "AsExpected", "")
    conditions = {c["type"]: c for c in (built, ready, progressing, degraded)}
    if cd is not None:
        for c in cd.conditions:
            conditions[c.type] = cond(c.type, c.status, c.reason, c.message)
        decision.events += [Event(e.type, e.reason, e.message) for e in cd.events]
        decision.requeue_after = cd.requeue_after
    elif "RolledBack" in {c.get("type") for c in old_conds}:
        conditions["RolledBack"] = cond(
            "RolledBack", "False", "NotRolledBack", f"revision {revision} is not rolled back"
        )
    canary_status: dict[str, Any] | None = None
    if cd is not None:
        canary_status = {
            **cd.state.to_json(),
            "weight": serving.canary_weight,
            "plans": [{k: p[k] for k in STABLE_PLAN_FIELDS if k in p} for p in builds.plans],
        }
    elif old_status.get("canary") and stable_now == revision:
        canary_status = dict(old_status["canary"])  # the last attempt's record stays readable
        canary_status["weight"] = 0

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "revision": revision,
        "conditions": list(conditions.values()),
        "plans": builds.plans,
        "stable": serving.stable or None,
        "canary": canary_status,
        "lastGoodRevision": stable_now or old_status.get("lastGoodRevision") or None,
    }
    status = {k: v for k, v in status.items() if v is not None}
    _finish_status(decision, body, status)
    if decision.status is not None:
        # Merge patches drop keys that are absent; null them explicitly to clear old values.
        for k in STATUS_KEYS:
            decision.status.setdefault(k, None)
