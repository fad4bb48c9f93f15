"""kopf wiring, kept thin: indexes of what exists, one reconcile for create/update/resume, and a
work queue that re-reconciles an engine whenever something it owns changes (plus a slow resync).

Reads come from kopf's in-memory indexes, fed by the watches, so a steady state costs no API
requests. The queue is operator-wide rather than a per-resource daemon or timer on purpose:
kopf puts a finalizer on every resource that has a daemon or timer, and a finalizer would block
``kubectl delete`` whenever the operator is not running (uninstall, GitOps pruning).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from trtops_operator import GROUP, PLURAL, VERSION, builders, k8s, metrics
from trtops_operator.canary import prometheus as canary_prometheus
from trtops_operator.canary import steps as canary_steps
from trtops_operator.canary.analysis import Verdict
from trtops_operator.canary.errors import RouterMisconfigured, RouterUnavailable
from trtops_operator.canary.router_io import RouterIO
from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec
from trtops_operator.reconcile import (
    OWNER_KEY,
    DeploymentObs,
    Event,
    JobObs,
    Observed,
    PodObs,
    RouterAction,
    canary_in_flight,
    decide,
    summarize_deployment,
    summarize_job,
    summarize_pod,
)

log = logging.getLogger("trtops_operator")
CONFIG = OperatorConfig.from_env()
MANAGED = {"app.kubernetes.io/managed-by": "trtops"}
EngineKey = tuple[str, str]  # (namespace, name)
T = TypeVar("T")


@dataclass
class _State:
    """Process-wide state, created at startup inside kopf's event loop."""

    api: k8s.Api | None = None
    queue: asyncio.Queue[EngineKey] | None = None
    pending: set[EngineKey] = field(default_factory=set)
    locks: dict[EngineKey, asyncio.Lock] = field(default_factory=dict)
    # (namespace, Job) -> engines waiting on it (a Job wakes its owners; these are the others)
    waiting: dict[tuple[str, str], set[EngineKey]] = field(default_factory=dict)
    indices: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The API writes' own threads: asyncio's default executor is cpu_count + 4 threads, shared
    # with everything else, which serialized 500 engines' writes behind each other.
    executor: ThreadPoolExecutor | None = None


S = _State()


async def _api_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking kubernetes-client call on the API threads."""
    return await asyncio.get_running_loop().run_in_executor(
        S.executor, functools.partial(fn, *args, **kwargs)
    )


# --- indexes: what exists ---------------------------------------------------------------------


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        # Annotations carry the manual canary commands (promote/abort/pause/resume).
        "metadata": {
            k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "annotations")
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


@kopf.index(GROUP, VERSION, PLURAL)
def engine_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Hashable, Any]:
    return {(namespace, name): _slim(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def plan_index(
    namespace: str | None, status: kopf.Status, uid: str | None = None, **_: Any
) -> dict[Hashable, Any]:
    # Remember which engine recorded each plan: an engine's own plan is never "reused".
    return {
        (namespace, p["job"]): {**p, OWNER_KEY: uid}
        for p in status.get("plans") or []
        if p.get("job")
    }


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def job_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return {(namespace, name): summarize_job(body)}


@kopf.index("v1", "pods", labels={"trtops.dev/component": "build"})
def build_pod_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    pod = summarize_pod(body)
    return {(namespace, pod.job): pod}


@kopf.index("apps", "v1", "deployments", labels={**MANAGED, "trtops.dev/component": "serve"})
def deployment_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    dep = summarize_deployment(body)
    return {(namespace, dep.engine): dep}


@kopf.index("v1", "services", labels=MANAGED)
def service_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Hashable, Any]:
    return {(namespace, name): builders.stamped_hash(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
def pdb_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return {(namespace, name): builders.stamped_hash(body)}


class _NsView(Mapping[str, Any]):
    """One namespace of a kopf index keyed by (namespace, name), first value per key."""

    def __init__(self, index: Any, namespace: str) -> None:
        self.index, self.namespace = index, namespace

    def __getitem__(self, name: str) -> Any:
        for value in self.index[(self.namespace, name)]:
            return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (k[1] for k in list(self.index) if k[0] == self.namespace)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _AllView(Mapping[str, Any]):
    """One namespace of a kopf index, every value per key."""

    def __init__(self, index: Any, namespace: str) -> None:
        self.index, self.namespace = index, namespace

    def __getitem__(self, name: str) -> list[Any]:
        if (self.namespace, name) not in self.index:
            raise KeyError(name)
        return list(self.index[(self.namespace, name)])

    def __iter__(self) -> Iterator[str]:
        return (k[1] for k in list(self.index) if k[0] == self.namespace)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _observed(namespace: str, name: str, idx: Mapping[str, Any]) -> Observed:
    deployments = idx["deployment_index"]
    deps: dict[str, DeploymentObs] = {}
    if (namespace, name) in deployments:
        deps = {d.name: d for d in deployments[(namespace, name)]}
    return Observed(
        jobs=_NsView(idx["job_index"], namespace),
        pods=_AllView(idx["build_pod_index"], namespace),
        known_plans=_NsView(idx["plan_index"], namespace),
        deployments=deps,
        services=_NsView(idx["service_index"], namespace),
        pdbs=_NsView(idx["pdb_index"], namespace),
    )


# --- the reconcile ----------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _lock(key: EngineKey) -> asyncio.Lock:
    lock = S.locks.get(key)
    if lock is None:
        lock = S.locks[key] = asyncio.Lock()
    return lock


def _enqueue(key: EngineKey, delay: float = 0.0) -> None:
    if S.queue is None:
        return
    if delay > 0:
        asyncio.get_running_loop().call_later(delay, _enqueue, key)
    elif key not in S.pending:
        S.pending.add(key)
        S.queue.put_nowait(key)


async def _reconcile(body: Mapping[str, Any], idx: Mapping[str, Any], trigger: str) -> None:
    """One level-based pass over one engine; raises kopf errors for kopf to retry or report."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    api = S.api
    if api is None:
        raise kopf.TemporaryError("operator is still starting", delay=1)
    started = time.monotonic()
    error: str | None = None
    try:
        async with _lock((ns, name)):
            # The body may have been read before waiting for the lock; a reconcile that finished
            # meanwhile wrote status (e.g. this engine's own plans), so take the freshest copy.
            for fresh in (idx.get("engine_index") or {}).get((ns, name), ()):
                body = fresh
            observed = _observed(ns, name, idx)
            verdict = await _analysis_if_due(body)
            now = _now()
            decision = decide(body, observed, CONFIG, now, verdict=verdict)
            for job in [j["metadata"]["name"] for j in decision.create] + list(decision.adopt):
                S.waiting.setdefault((ns, job), set()).add((ns, name))
            for p in (decision.status or body.get("status") or {}).get("plans") or []:
                S.waiting.get((ns, p.get("job", "")), set()).discard((ns, name))
            created = await _api_call(k8s.apply_decision, api, dict(body), decision, now)
            metrics.record_builds(body, decision)
            if decision.router is not None:
                await _set_router(body, decision.router)
            if len(created) < len(decision.create):
                _enqueue((ns, name), delay=2.0)  # someone else made that Job: adopt it soon
            if decision.requeue_after is not None:
                _enqueue((ns, name), delay=max(decision.requeue_after, 0.5))
        if decision.invalid:
            error = "invalid"
            raise kopf.PermanentError(decision.invalid)
    except kopf.TemporaryError:
        error = "temporary"
        raise
    except kopf.PermanentError:
        error = error or "permanent"
        raise
    finally:
        metrics.record_reconcile(trigger, time.monotonic() - started, error)


async def _analysis_if_due(body: Mapping[str, Any]) -> Verdict | None:
    """Query Prometheus for the canary in flight when its next analysis is due."""
    state = canary_in_flight(body)
    if state is None:
        return None
    try:
        spec = TrtEngineSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None
    if spec.rollout is None or spec.rollout.analysis is None:
        return None
    now = dt.datetime.now(dt.UTC)
    if not canary_steps.analysis_due(spec.rollout, state, now):
        return None
    meta = body["metadata"]
    # At weight 100 stable serves nothing: there is nothing to compare with.
    compare = state.weight < 100
    return await canary_prometheus.analyse(
        spec.rollout.analysis,
        model=spec.serving.model_name or meta["name"],
        canary_revision=state.revision,
        stable_revision=(state.stable_revision or None) if compare else None,
        extra_labels={"namespace": meta["namespace"]},
        max_window_seconds=canary_steps.analysis_window(state, now),
        stable_note="no stable revision" if compare else "the canary serves all traffic",
    )


async def _set_router(body: Mapping[str, Any], action: RouterAction) -> None:
    """Move the traffic weights on the user's route object (only the backends we own)."""
    assert S.api is not None
    meta = body["metadata"]
    router = RouterIO(S.api.client)
    try:
        if action.kind == "gatewayAPI":
            await _api_call(
                router.set_httproute_weights,
                meta["namespace"],
                action.name,
                dict(action.desired),
                set(action.owned),
            )
        else:
            await _api_call(
                router.set_virtualservice_weights,
                meta["namespace"],
                action.name,
                dict(action.desired),
                set(action.owned),
                action.routes,
            )
    except RouterMisconfigured as exc:
        event = Event("Warning", "RouterMisconfigured", str(exc))
        await _api_call(S.api.post_event, dict(body), event)
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    except RouterUnavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile_engine(body: kopf.Body, reason: str, **kwargs: Any) -> None:
    """Create, update and resume are the same thing: make the world match the spec."""
    await _reconcile(_slim(body), kwargs, trigger=str(reason))


async def _worker() -> None:
    assert S.queue is not None
    while True:
        key = await S.queue.get()
        S.pending.discard(key)
        engines = S.indices["engine_index"]
        if key not in engines:
            S.locks.pop(key, None)
            continue
        body = next(iter(engines[key]))
        try:
            await _reconcile(body, S.indices, trigger="watch")
        except kopf.TemporaryError as exc:
            log.info("reconcile of %s/%s will be retried: %s", *key, exc)
            _enqueue(key, delay=float(exc.delay or 5))
        except kopf.PermanentError as exc:
            log.warning("reconcile of %s/%s failed: %s", *key, exc)
        except Exception:
            log.exception("reconcile of %s/%s crashed; retrying in 30s", *key)
            _enqueue(key, delay=30.0)


async def _resync() -> None:
    while True:
        await asyncio.sleep(CONFIG.resync_seconds)
        for key in list(S.indices["engine_index"]):
            _enqueue(key)


# --- wake-ups: something an engine owns or waits on changed -----------------------------------


def _wake_job(namespace: str, job: str, owner_names: tuple[str, ...]) -> None:
    for owner in owner_names:
        _enqueue((namespace, owner))
    for key in S.waiting.get((namespace, job), ()):
        _enqueue(key)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_changed(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    _wake_job(namespace or "", name, summarize_job(body).owner_names)


@kopf.on.event("v1", "pods", labels={"trtops.dev/component": "build"})
async def build_pod_changed(namespace: str | None, body: kopf.Body, **kwargs: Any) -> None:
    pod: PodObs = summarize_pod(body)
    owners: tuple[str, ...] = ()
    job: JobObs
    for job in kwargs["job_index"].get((namespace, pod.job), []):
        owners = job.owner_names
    _wake_job(namespace or "", pod.job, owners)


@kopf.on.event("apps", "v1", "deployments", labels={**MANAGED, "trtops.dev/component": "serve"})
async def deployment_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    engine = labels.get("trtops.dev/engine")
    if engine:
        _enqueue((namespace or "", engine))


# --- lifecycle --------------------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # Handler outcomes are in status conditions and our own Events; kopf's per-handler
    # "succeeded" Events would only double the API writes.
    settings.posting.level = logging.WARNING
    # Watches are re-opened this often: one request per resource kind per period while idle.
    watch_timeout = int(os.environ.get("TRTOPS_WATCH_TIMEOUT_SECONDS", "300"))
    settings.watching.server_timeout = watch_timeout
    settings.watching.client_timeout = watch_timeout + 30
    S.indices = {k: v for k, v in kwargs.items() if k.endswith("_index")}
    S.executor = ThreadPoolExecutor(CONFIG.api_threads, thread_name_prefix="trtops-api")
    S.api = await _api_call(k8s.Api, connections=CONFIG.api_threads)
    S.queue = asyncio.Queue()
    S.pending.clear()
    S.tasks = [asyncio.create_task(_worker()) for _ in range(max(CONFIG.workers, 1))]
    S.tasks.append(asyncio.create_task(_resync()))
    metrics.watch_engines(lambda: S.indices.get("engine_index") or {})
    if CONFIG.metrics_port:
        metrics.serve(CONFIG.metrics_port, CONFIG.metrics_address)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in S.tasks:
        task.cancel()
    await asyncio.gather(*S.tasks, return_exceptions=True)
    S.tasks = []
    S.queue = None
    metrics.stop()
    if S.api is not None:
        S.api.client.close()  # type: ignore[no-untyped-call]  # kubernetes is untyped
        S.api = None
    if S.executor is not None:
        S.executor.shutdown(wait=False, cancel_futures=True)
        S.executor = None
