"""One reconcile pass with its I/O, and the loops that drive passes: gather what exists from the
indexes, ask Prometheus when a canary analysis is due, decide (pure), carry the decision out
through ``k8s``, and queue the engine again when it must come back.

No kopf here: failures are :mod:`trtops_operator.errors`; the handlers translate them for kopf.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import ValidationError

from trtops_operator import conditions, indexes, k8s, leader, metrics, rollout
from trtops_operator.canary import runner as canary_runner
from trtops_operator.canary.analysis import Verdict
from trtops_operator.canary.errors import RouterMisconfigured
from trtops_operator.canary.routers import router_kind
from trtops_operator.config import OperatorConfig
from trtops_operator.decision import RouterAction
from trtops_operator.errors import ApiRefused, PermanentError, TemporaryError
from trtops_operator.experiment.prometheus import MeasurePool
from trtops_operator.experiment.run import poll_measurement
from trtops_operator.freshness import LastWrites
from trtops_operator.models import TrtEngineSpec
from trtops_operator.reconcile import decide
from trtops_operator.status_model import EngineStatus, EngineView
from trtops_operator.workqueue import WorkQueue

__all__ = ["InvalidSpec", "Runtime", "now_rfc3339"]

log = logging.getLogger("trtops_operator")
EngineKey = tuple[str, str]  # (namespace, name)
T = TypeVar("T")
REFUSED_RETRY_SECONDS = 60  # a policy, quota or webhook that refused an object can change
ADOPT_RETRY_SECONDS = 2.0  # someone else made a Job this pass wanted to create: adopt it soon
ROUTER_RETRY_SECONDS = 30.0
# On engines whose rollout weighs a user's route: deletion waits until their backends are out
# of it. Only those engines: every other one deletes at once, even while no operator runs.
ROUTE_FINALIZER = "trtops.dev/route-cleanup"


def edits_route(body: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...]] | None:
    """(router kind, route name, Istio routes) when the engine's rollout weighs a user's route."""
    try:
        spec = TrtEngineSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None
    router = spec.rollout.traffic_router if spec.rollout else None
    if router is None or router_kind(router) == "replicas":
        return None
    if router.gateway_api is not None:
        return "gatewayAPI", router.gateway_api.http_route, ()
    assert router.istio is not None
    return "istio", router.istio.virtual_service, tuple(router.istio.routes)


class InvalidSpec(PermanentError):
    """The spec cannot be used; status says why. Nothing retries until the spec changes."""


def _route_refused(body: Mapping[str, Any]) -> bool:
    """Whether status says the route could not be used (``Degraded=True/RouterMisconfigured``)."""
    cond = EngineView.parse(body).status.condition("Degraded")
    return cond is not None and cond.status == "True" and cond.reason == "RouterMisconfigured"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Runtime:
    """Process-wide state, created at startup inside kopf's event loop."""

    def __init__(self, config: OperatorConfig, api: k8s.Api, indices: Mapping[str, Any],
                 executor: ThreadPoolExecutor) -> None:  # fmt: skip
        self.config, self.api, self.indices, self.executor = config, api, indices, executor
        self.queue: WorkQueue[EngineKey] = WorkQueue(
            base_seconds=config.retry_base_seconds, max_seconds=config.retry_max_seconds
        )
        # Prometheus is asked here, never inside a reconcile: a slow or silent one costs an
        # analysis slot, not a worker; the verdict wakes the engine when it is in.
        self.analyses = canary_runner.AnalysisPool(
            config.analysis_workers,
            lambda key: self.queue.add(key),  # type: ignore[arg-type]  # keys are EngineKeys
        )
        self.experiments = MeasurePool(lambda key: self.queue.add(key))  # type: ignore[arg-type]  # keys are EngineKeys
        # Each status write's response, until the watch brings it back (freshness.py).
        self.last_writes = LastWrites()
        self.elector: leader.Elector | None = None  # None: --standalone, always acting

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking kubernetes-client call on the API threads (asyncio's default
        executor is shared with everything else and serialized 500 engines' writes)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(fn, *args, **kwargs)
        )

    async def reconcile(
        self, body: Mapping[str, Any], idx: Mapping[str, Any], trigger: str
    ) -> None:
        """One level-based pass over one engine; raises ``TemporaryError`` (retry) or
        ``PermanentError`` (a person must act)."""
        meta = body["metadata"]
        key: EngineKey = (meta["namespace"], meta["name"])
        if self.elector is not None and not self.elector.leading:
            return  # a follower acts on nothing; the leader's election re-checks every engine
        started = time.monotonic()
        error: str | None = None
        try:
            async with self.queue.lock(key):
                # The body may have been read before waiting for the lock; a pass that finished
                # meanwhile wrote status (e.g. this engine's own plans), so take the freshest.
                for fresh in (idx.get("engine_index") or {}).get(key, ()):
                    body = fresh
                # Never act on a copy older than our own last write (a command seen as new
                # again, a transition told twice).
                body = self.last_writes.freshest(key, body)
                if body["metadata"].get("deletionTimestamp"):
                    await self._finalize(key, body)
                else:
                    await self._pass(key, body, idx)
        except InvalidSpec:
            error = "invalid"
            raise
        except TemporaryError:
            error = "temporary"
            raise
        except PermanentError:
            error = "permanent"
            raise
        finally:
            metrics.record_reconcile(trigger, time.monotonic() - started, error)

    async def _pass(self, key: EngineKey, body: Mapping[str, Any], idx: Mapping[str, Any]) -> None:
        observed = indexes.observed(*key, idx)
        verdict = self._analysis_if_due(body)
        measured = poll_measurement(
            self.experiments, body, self.config.allowed_prometheus, self.config.prices
        )
        now = now_rfc3339()
        decision = decide(body, observed, self.config, now, verdict=verdict, measured=measured)
        self.queue.wait_on(key, [(key[0], job) for job in decision.waiting_on])
        stuck: RouterMisconfigured | None = None
        if decision.router is not None and _route_refused(body):
            # The route was unusable last pass, after this engine's objects were written: try it
            # first, so that a route still unusable is told in this pass's one status write
            # instead of Degraded turning False, then True again, on every retry.
            try:
                await self._move_route(body, decision.router)
            except RouterMisconfigured as exc:
                stuck = exc
                decision.status, event = conditions.route_unusable(
                    EngineView.parse(body), decision.status, str(exc)[:1024], now
                )
                decision.events = [] if event is None else [event]
        try:
            created, written = await self.call(k8s.apply_decision, self.api, body, decision)
        except ApiRefused as exc:
            # The user must see why nothing changes: say it in status, then retry slowly.
            status, event = conditions.refused(
                EngineView.parse(body), decision.status, str(exc)[:1024], now, reason=exc.reason
            )
            if status is not None:
                await self.call(self.api.patch_status, key[0], key[1], status)
            if event is not None:
                await self.call(self.api.post_event, body, event)
            raise TemporaryError(str(exc), delay=REFUSED_RETRY_SECONDS) from exc
        if written is not None:
            self.last_writes.record(key, indexes.slim(written))
        metrics.record_builds(body, decision)
        if decision.router is not None:
            await self._set_finalizer(key, body, present=True)
            if stuck is not None:
                raise TemporaryError(str(stuck), delay=ROUTER_RETRY_SECONDS) from stuck
            await self._set_router(key, body, decision.router)
        elif edits_route(body) is None:
            await self._set_finalizer(key, body, present=False)
        if len(created) < len(decision.create):
            self.queue.add(key, delay=ADOPT_RETRY_SECONDS)
        if decision.requeue_after is not None:
            self.queue.add(key, delay=max(decision.requeue_after, 0.5))
        if decision.invalid:
            raise InvalidSpec(decision.invalid)

    def _analysis_if_due(self, body: Mapping[str, Any]) -> Verdict | None:
        """The verdict of the canary's due analysis once the analysis pool has it: the first
        pass that finds one due starts it, a later pass (woken by the pool) gets it."""
        state = rollout.canary_in_flight(EngineStatus.parse(body.get("status")))
        if state is None:
            return None
        try:
            spec = TrtEngineSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None
        if spec.rollout is None or spec.rollout.analysis is None:
            return None
        now = dt.datetime.now(dt.UTC)
        if not rollout.analysis_due(spec.rollout, state, now):
            return None
        meta = body["metadata"]
        # At weight 100 stable serves nothing: there is nothing to compare with.
        compare = state.weight < 100
        analysis = spec.rollout.analysis

        def start() -> Awaitable[Verdict]:
            return canary_runner.analyse(
                analysis,
                allowed=self.config.allowed_prometheus,
                model=spec.serving.model_name or meta["name"],
                canary_revision=state.revision,
                stable_revision=(state.stable_revision or None) if compare else None,
                extra_labels={"namespace": meta["namespace"]},
                max_window_seconds=rollout.analysis_window(state, now),
                stable_note="no stable revision" if compare else "the canary serves all traffic",
            )

        # Which analysis: a verdict that comes in after the canary moved on is dropped.
        token = (state.revision, state.step_index, state.step_started_at, state.last_analysis_at)
        return self.analyses.poll((meta["namespace"], meta["name"]), token, start)

    async def _set_finalizer(
        self, key: EngineKey, body: Mapping[str, Any], *, present: bool
    ) -> None:
        body = self.last_writes.freshest(key, body)  # this pass's own status write, if any
        finalizers = list(body["metadata"].get("finalizers") or [])
        if (ROUTE_FINALIZER in finalizers) == present:
            return
        wanted = (
            [*finalizers, ROUTE_FINALIZER]
            if present
            else [f for f in finalizers if f != ROUTE_FINALIZER]
        )
        written = await self.call(self.api.set_finalizers, body, wanted)
        if written is not None:
            self.last_writes.record(key, indexes.slim(written))

    async def _finalize(self, key: EngineKey, body: Mapping[str, Any]) -> None:
        """A deleted engine: take its backends out of the user's route, then let it go. Its own
        objects (Jobs, Deployments, Services, PDB) go by owner reference; a build pod stopped
        that way removes its temporary folder (SIGTERM)."""
        if ROUTE_FINALIZER not in (body["metadata"].get("finalizers") or []):
            return
        route = edits_route(body)
        if route is not None:
            kind, route_name, routes = route
            name = key[1]
            owned = (name, f"{name}-canary")
            await self.call(self.api.routes.release, kind, key[0], route_name, name, owned, routes)
            log.info("took %s/%s out of %s %s", *key, kind, route_name)
        await self._set_finalizer(key, body, present=False)

    async def _move_route(self, body: Mapping[str, Any], action: RouterAction) -> None:
        """Set the weights on the user's route object; raises ``RouterMisconfigured``."""
        ns = body["metadata"]["namespace"]
        routes = self.api.routes
        if action.kind == "gatewayAPI":
            await self.call(
                routes.set_httproute_weights,
                ns,
                action.name,
                dict(action.desired),
                set(action.owned),
                engine=body["metadata"]["name"],
            )
        else:
            await self.call(
                routes.set_virtualservice_weights,
                ns,
                action.name,
                dict(action.desired),
                set(action.owned),
                action.routes,
                engine=body["metadata"]["name"],
            )

    async def _set_router(
        self, key: EngineKey, body: Mapping[str, Any], action: RouterAction
    ) -> None:
        """Move the traffic weights on the user's route object (only the backends we own)."""
        try:
            await self._move_route(body, action)
        except RouterMisconfigured as exc:
            # Status says it, not only an Event: the route did not move, whatever weight the
            # canary records (before, Degraded stayed False and only the log told).
            fresh = self.last_writes.freshest(key, body)
            status, event = conditions.route_unusable(
                EngineView.parse(fresh), None, str(exc)[:1024], now_rfc3339()
            )
            if status is not None:
                written = await self.call(self.api.patch_status, key[0], key[1], status)
                if written is not None:
                    self.last_writes.record(key, indexes.slim(written))
            if event is not None:
                await self.call(self.api.post_event, body, event)
            # Someone may create or fix the route object without touching the engine.
            raise TemporaryError(str(exc), delay=ROUTER_RETRY_SECONDS) from exc

    # --- the loops ----------------------------------------------------------------------------

    async def work(self) -> None:
        """Reconcile queued engines, one at a time per worker; failures back off per engine."""
        engines = self.indices["engine_index"]
        while True:
            key = await self.queue.get()
            if key not in engines:
                self.queue.release(key)  # deleted: drop all its state
                self.last_writes.forget(key)
                self.analyses.forget(key)
                self.experiments.forget(key)
                continue
            body = next(iter(engines[key]))
            try:
                await self.reconcile(body, self.indices, trigger="watch")
            except TemporaryError as exc:
                delay = self.queue.retry(key, at_least=exc.delay)
                log.info("reconcile of %s/%s will be retried in %.0fs: %s", *key, delay, exc)
            except PermanentError as exc:
                self.queue.forget(key)
                log.warning("reconcile of %s/%s failed: %s", *key, exc)
            except Exception:
                delay = self.queue.retry(key, at_least=self.config.retry_base_seconds)
                log.exception("reconcile of %s/%s crashed; retrying in %.0fs", *key, delay)
            else:
                self.queue.forget(key)

    async def resync(self) -> None:
        """Every engine is re-checked every ``resync_seconds`` even without events."""
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            self.recheck_all()

    def recheck_all(self) -> None:
        """Queue every engine (a resync; a new leader, which acted on nothing before)."""
        for key in list(self.indices.get("engine_index") or {}):
            self.queue.add(key)

    def wake(self, namespace: str, engines: tuple[str, ...]) -> None:
        for name in engines:
            self.queue.add((namespace, name))

    def wake_job(self, namespace: str, job: str, owner_names: tuple[str, ...]) -> None:
        """A build Job (or its pod) changed: its owners and the engines waiting on it."""
        self.wake(namespace, owner_names)
        for key in self.queue.waiters((namespace, job)):
            self.queue.add(key)
