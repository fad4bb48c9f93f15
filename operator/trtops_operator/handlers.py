"""kopf wiring, and nothing else: the indexes of what exists, one handler for create, update and
resume, the watch events that wake engines, and startup/cleanup.

Reads come from kopf's in-memory indexes, fed by the watches, so a steady state costs no API
requests. Engines are re-reconciled by an operator-wide work queue (``driver``/``workqueue``)
rather than a per-resource daemon or timer on purpose: kopf puts a finalizer on every resource
that has a daemon or timer, and a finalizer would block ``kubectl delete`` whenever the operator
is not running (uninstall, GitOps pruning). The operator's own errors become kopf's here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from trtops_worker.contract import (
    COMPONENT_BUILD,
    COMPONENT_SERVE,
    LABEL_COMPONENT,
    LABEL_ENGINE,
    MANAGED_BY,
)

from trtops_operator import GROUP, PLURAL, VERSION, indexes, k8s, leader, metrics
from trtops_operator.config import OperatorConfig
from trtops_operator.driver import Runtime
from trtops_operator.errors import PermanentError, TemporaryError
from trtops_operator.observation import (
    JobObs,
    summarize_job,
    summarize_pod,
    summarize_serving_pod,
)

BUILD_PODS = {LABEL_COMPONENT: COMPONENT_BUILD}
SERVE_PODS = {LABEL_COMPONENT: COMPONENT_SERVE}
SERVE_DEPLOYMENTS = {**MANAGED_BY, LABEL_COMPONENT: COMPONENT_SERVE}


def _runtime(memo: kopf.Memo) -> Runtime | None:
    """The operator's state, kept in kopf's operator-wide ``memo`` (set at startup)."""
    rt = memo.get("runtime")
    return rt if isinstance(rt, Runtime) else None


# --- indexes: what exists ---------------------------------------------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
def engine_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Hashable, Any]:
    return indexes.engine_entry(namespace, name, body)


@kopf.index(GROUP, VERSION, PLURAL)
def plan_index(
    namespace: str | None, status: kopf.Status, uid: str | None = None, **_: Any
) -> dict[Hashable, Any]:
    return indexes.plan_entry(namespace, status, uid)


@kopf.index("batch", "v1", "jobs", labels=MANAGED_BY)
def job_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return indexes.job_entry(namespace, name, body)


@kopf.index("v1", "pods", labels=BUILD_PODS)
def build_pod_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return indexes.pod_entry(namespace, body)


@kopf.index("v1", "pods", labels=SERVE_PODS)
def serving_pod_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return indexes.serving_pod_entry(namespace, body)


@kopf.index("apps", "v1", "deployments", labels=SERVE_DEPLOYMENTS)
def deployment_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return indexes.deployment_entry(namespace, body)


@kopf.index("v1", "services", labels=MANAGED_BY)
def service_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Hashable, Any]:
    return indexes.hash_entry(namespace, name, body)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=MANAGED_BY)
def pdb_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return indexes.hash_entry(namespace, name, body)


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED_BY)
def network_policy_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Hashable, Any]:
    return indexes.hash_entry(namespace, name, body)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED_BY)
def hpa_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Hashable, Any]:
    return indexes.hash_entry(namespace, name, body)


# --- the reconcile ----------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile_engine(body: kopf.Body, reason: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Create, update and resume are the same thing: make the world match the spec."""
    rt = _runtime(memo)
    if rt is None:
        raise kopf.TemporaryError("operator is still starting", delay=1)
    try:
        await rt.reconcile(indexes.slim(body), kwargs, trigger=str(reason))
    except TemporaryError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    except PermanentError as exc:
        raise kopf.PermanentError(str(exc)) from exc


# --- wake-ups: something an engine owns or waits on changed -----------------------------------


def _deleting(body: kopf.Body, **_: Any) -> bool:
    return bool(body["metadata"].get("deletionTimestamp"))


@kopf.on.event(GROUP, VERSION, PLURAL, when=_deleting)
async def engine_deleting(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Deletion is no update to kopf: wake the engine so that its finalizer runs."""
    if (rt := _runtime(memo)) is not None:
        rt.wake(namespace or "", (name,))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_BY)
async def job_changed(
    namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    if (rt := _runtime(memo)) is not None:
        rt.wake_job(namespace or "", name, summarize_job(body).owner_names)


@kopf.on.event("v1", "pods", labels=BUILD_PODS)
async def build_pod_changed(
    namespace: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    pod = summarize_pod(body)
    owners: tuple[str, ...] = ()
    job: JobObs
    for job in kwargs["job_index"].get((namespace, pod.job), []):
        owners = job.owner_names
    if (rt := _runtime(memo)) is not None:
        rt.wake_job(namespace or "", pod.job, owners)


@kopf.on.event("v1", "pods", labels=SERVE_PODS)
async def serving_pod_changed(
    namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A pod that refused its plan or is stuck wakes its engine (the Deployment status tells
    the rest, recoveries included)."""
    pod = summarize_serving_pod(body)
    stuck = pod.incompatible is not None or pod.stuck is not None
    if stuck and pod.engine and (rt := _runtime(memo)) is not None:
        rt.wake(namespace or "", (pod.engine,))


@kopf.on.event("apps", "v1", "deployments", labels=SERVE_DEPLOYMENTS)
async def deployment_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    engine = labels.get(LABEL_ENGINE)
    if engine and (rt := _runtime(memo)) is not None:
        rt.wake(namespace or "", (engine,))


# --- lifecycle --------------------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config = OperatorConfig.from_env()
    # Handler outcomes are in status conditions and our own Events; kopf's per-handler
    # "succeeded" Events would only double the API writes.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = config.watch_timeout_seconds
    settings.watching.client_timeout = config.watch_timeout_seconds + 30
    idx = {k: v for k, v in kwargs.items() if k in indexes.INDEXES}
    executor = ThreadPoolExecutor(config.api_threads, thread_name_prefix="trtops-api")
    api = await asyncio.get_running_loop().run_in_executor(
        executor, lambda: k8s.Api(connections=config.api_threads)
    )
    rt = Runtime(config, api, idx, executor)
    tasks = [asyncio.create_task(rt.work()) for _ in range(config.workers)]
    memo["tasks"] = [*tasks, asyncio.create_task(rt.resync())]
    election = leader.LeaderConfig.from_env()
    if election.enabled:
        rt.elector = leader.Elector(election, api.client, on_elected=rt.recheck_all)
        memo["tasks"].append(asyncio.create_task(rt.elector.run()))
    metrics.watch_engines(lambda: idx.get("engine_index") or {}, config.prices)
    if config.metrics_port:
        metrics.serve(config.metrics_port, config.metrics_address)
    memo["runtime"] = rt


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    tasks: list[asyncio.Task[None]] = memo.pop("tasks", [])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    metrics.stop()
    rt = _runtime(memo)
    memo.pop("runtime", None)
    if rt is not None:
        if rt.elector is not None:
            await asyncio.to_thread(rt.elector.release)  # the next leader starts at once
        await rt.analyses.close()
        rt.api.client.close()  # type: ignore[no-untyped-call]  # kubernetes is untyped
        rt.executor.shutdown(wait=False, cancel_futures=True)
