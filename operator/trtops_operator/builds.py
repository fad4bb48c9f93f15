"""The build step, pure: for each GPU target of the revision the spec asks for, reuse a recorded
or shared plan, wait for its Job, create or adopt the Job, or read the Job's result.

One build per (build key, storage claim, accuracy gate): the Job name is a hash of the three
(``keys.job_name``), so engines that ask for the same build share one Job and one plan.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trtops_operator import keys, manifests
from trtops_operator.config import OperatorConfig
from trtops_operator.decision import BuildOutcome, Event
from trtops_operator.observation import OWNER_KEY, Observed, Stuck
from trtops_operator.results import BuildFailure, BuildSuccess, parse_result
from trtops_operator.status_model import EngineView, PlanRecord

__all__ = ["Builds", "Target", "decide_builds"]


@dataclass(frozen=True)
class Target:
    """Where one GPU target's build stands."""

    product: str | None  # the GPU product; None: the CPU build (onnxruntime)
    key: str
    job: str
    state: Literal["built", "building", "failed"]
    plan: PlanRecord | None = None
    failure: BuildFailure | None = None
    note: str = ""
    stuck: Stuck | None = None  # a building target whose pod cannot progress

    @property
    def label(self) -> str:
        return keys.target_label(self.product)


@dataclass
class Builds:
    """Where each build target stands, for the revision the spec asks for, and what to do."""

    targets: list[Target]
    revision: str
    create: list[dict[str, Any]] = field(default_factory=list)  # Jobs to create
    adopt: list[str] = field(default_factory=list)  # Jobs to co-own
    outcomes: list[BuildOutcome] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def plans(self) -> list[PlanRecord]:
        return [t.plan for t in self.targets if t.plan is not None]

    @property
    def failed(self) -> list[Target]:
        return [t for t in self.targets if t.state == "failed"]

    @property
    def building(self) -> list[Target]:
        return [t for t in self.targets if t.state == "building"]

    @property
    def stuck(self) -> Target | None:
        """The first building target whose pod cannot progress."""
        return next((t for t in self.building if t.stuck is not None), None)

    @property
    def ready(self) -> bool:
        return not self.failed and not self.building


def _plan(product: str | None, key: str, job: str, fields: Mapping[str, Any]) -> PlanRecord:
    return PlanRecord.model_validate(
        {**fields, "target": keys.target_label(product), "key": key, "job": job}
    )


def _observe(
    view: EngineView,
    engine: manifests.Engine,
    product: str | None,
    key: str,
    job: str,
    old_plans: Mapping[str, PlanRecord],
    observed: Observed,
    config: OperatorConfig,
    out: Builds,
    pin: str | None,
) -> Target:
    if job in old_plans:
        return Target(product, key, job, "built", old_plans[job])
    known = observed.known_plans.get(job)
    if known is not None:
        fields = {k: v for k, v in known.items() if k != OWNER_KEY}
        if known.get(OWNER_KEY) == view.uid:
            # Our own plan, seen in the index before our status caught up: not a reuse.
            return Target(product, key, job, "built", _plan(product, key, job, fields))
        precision = str(fields.get("precision") or engine.spec.build.precision)
        out.outcomes.append(BuildOutcome("reused", job, precision, keys.target_label(product)))
        plan = _plan(product, key, job, {**fields, "reused": True})
        return Target(product, key, job, "built", plan)
    obs = observed.jobs.get(job)
    if obs is None:
        out.create.append(
            manifests.render_build_job(
                engine, product, key, name=job, config=config, compute_capability=pin
            )
        )
        return Target(product, key, job, "building", note=f"build Job {job} created")
    if view.uid not in obs.owners:
        out.adopt.append(job)
    pods = sorted(observed.pods.get(job, ()), key=lambda p: (p.created, p.name))
    results = [r for r in (parse_result(p.message) for p in pods) if r is not None]
    success = next((r for r in reversed(results) if isinstance(r, BuildSuccess)), None)
    if success is not None:
        result = success.result
        out.outcomes.append(
            BuildOutcome(
                "cached" if result.cached else "succeeded",
                job,
                str(result.precision or engine.spec.build.precision),
                keys.target_label(product),
                result.build_seconds,
            )
        )
        return Target(product, key, job, "built", _plan(product, key, job, success.plan_fields()))
    failure = next((r for r in reversed(results) if isinstance(r, BuildFailure)), None)
    stuck = pods[-1].stuck if pods else None
    if stuck is not None and stuck.reason == "OOMKilled" and (obs.failed or failure is None):
        # Killed for memory, the worker wrote no result (its log tail is not the reason).
        failure = BuildFailure(
            "Resources", "OOMKilled", f"build pod {pods[-1].name}: {stuck.message}"
        )
    if obs.failed:
        if failure is None:
            failure = BuildFailure(
                "Job",
                obs.failure_reason or "JobFailed",
                obs.failure_message or f"build Job {job} failed without a result",
            )
        return Target(product, key, job, "failed", failure=failure)
    if obs.succeeded and failure is not None:  # exit code 0 but a failure report: trust the report
        return Target(product, key, job, "failed", failure=failure)
    if obs.succeeded:
        failure = BuildFailure(
            "Result",
            "ResultMissing",
            f"build Job {job} succeeded but its pod left no result in its termination message",
        )
        return Target(product, key, job, "failed", failure=failure)
    note = f"build Job {job} running"
    if stuck is not None:
        note = f"build pod {pods[-1].name}: {stuck.reason}: {stuck.message}"
    elif failure is not None:
        note += f"; a previous attempt failed: {failure.reason}: {failure.message}"
    return Target(product, key, job, "building", note=note, stuck=stuck)


def decide_builds(
    view: EngineView,
    engine: manifests.Engine,
    observed: Observed,
    config: OperatorConfig,
    pins: Mapping[str, str] | None = None,
    rebuild: str | None = None,
) -> Builds:
    """One build per GPU target: reuse, wait for, create or adopt its Job, read its result.
    ``pins``: GPU product -> compute capability its build is pinned to (``compat``);
    ``rebuild``: the accepted scheduled rebuild the plans come from (``rebuild.py``)."""
    spec = engine.spec
    pins = pins or {}
    old_plans = {p.job: p for p in view.status.plans}
    gate = keys.gate_json(spec)
    keyed = []
    for product in spec.target_products():
        pin = pins.get(product) if product is not None else None
        key = keys.build_key(spec, product, config.worker_image, pin, rebuild=rebuild)
        keyed.append((product, key, keys.job_name(key, spec.storage.claim_name, gate), pin))
    out = Builds([], keys.revision_of(k for _, k, _, _ in keyed))
    out.targets = [
        _observe(view, engine, p, k, j, old_plans, observed, config, out, pin)
        for p, k, j, pin in keyed
    ]
    old_built = view.status.condition("Built")
    old_built_reason = old_built.reason if old_built is not None else None
    out.outcomes += [
        BuildOutcome("failed", t.job, spec.build.precision, t.label)
        for t in out.failed
        if t.failure is not None and t.failure.reason != old_built_reason
    ]
    out.events += [
        Event("Normal", "PlanReused", f"{t.label}: reused plan of Job {t.job}")
        for t in out.targets
        if t.state == "built" and t.plan and t.plan.reused and t.job not in old_plans
    ]
    out.events += [
        Event(
            "Normal",
            "BuildStarted",
            f"build Job {job['metadata']['name']} created",
            job=job["metadata"]["name"],
        )
        for job in out.create
    ]
    return out


STORAGE_CATEGORY = "storage"  # StorageFull, StorageUnwritable: the claim, not the inputs
STORAGE_RETRY_MIN_S, STORAGE_RETRY_MAX_S = 30.0, 600.0


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def retry_storage_faults(
    view: EngineView, builds: Builds, observed: Observed, now: str
) -> tuple[list[str], float | None]:
    """Builds that failed on their storage (full, read-only) are retried by themselves once the
    fault may be gone: their failed Jobs are deleted, and the next pass creates them again. The
    wait doubles with the fault: it is as long as the fault has lasted (since ``Built`` went
    False), between 30 s and 10 min, so a claim that stays full costs a Job every 10 min, never
    a loop. Returns the Jobs to delete now and when to come back; the failures still waiting
    say when they are retried."""
    since = view.status.condition("Built")
    due: list[str] = []
    requeue: float | None = None
    for i, t in enumerate(builds.targets):
        job = observed.jobs.get(t.job)
        if t.failure is None or t.failure.category.lower() != STORAGE_CATEGORY or job is None:
            continue
        failed_at = _time(job.failed_at or now)
        start = (
            _time(since.last_transition_time)
            if since is not None and since.status == "False" and since.last_transition_time
            else failed_at
        )
        wait = min(
            max((failed_at - start).total_seconds(), STORAGE_RETRY_MIN_S), STORAGE_RETRY_MAX_S
        )
        retry_at = failed_at + dt.timedelta(seconds=wait)
        left = (retry_at - _time(now)).total_seconds()
        if left <= 0:
            due.append(t.job)
            continue
        at = retry_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        failure = BuildFailure(
            t.failure.category, t.failure.reason, f"{t.failure.message}; retried at {at}"
        )
        builds.targets[i] = Target(t.product, t.key, t.job, t.state, failure=failure)
        requeue = min(requeue or left, left)
    return due, requeue
