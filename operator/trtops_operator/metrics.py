"""Operator metrics (Prometheus), served on their own port. Kept apart so handlers only call
``record_*`` and register where the engines are.

Two kinds, on purpose:

- Events (reconciles, errors, finished builds) are counters and histograms, moved as they
  happen. Each build is counted once even when a reconcile that read a stale body reports it
  again (:func:`record_builds` remembers what it counted).
- State (accuracy of each plan, traffic weights) is read from the engines' status at scrape time
  by :class:`EngineCollector`: nothing to keep in sync, and a restarted operator reports the
  same values as soon as its watch has listed the engines.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import ValidationError

from trtops_operator import cost, keys
from trtops_operator.decision import Decision
from trtops_operator.models import Cost, TrtEngineSpec

__all__ = [
    "BUILD_BUCKETS",
    "EngineCollector",
    "EngineSource",
    "Once",
    "record_builds",
    "record_reconcile",
    "serve",
    "snapshot",
    "stop",
    "watch_engines",
]

OUTCOMES = ("succeeded", "cached", "reused", "failed")
ERROR_KINDS = ("invalid", "temporary", "permanent")  # what driver.Runtime.reconcile reports
# Builds take seconds (a cached ONNX Runtime plan) to the better part of an hour (TensorRT
# tactic search on a big model).
BUILD_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

RECONCILES = Counter("trtops_reconciles_total", "Reconciles of TrtEngines, by trigger", ["trigger"])
ERRORS = Counter("trtops_reconcile_errors_total", "Reconciles that failed, by kind", ["kind"])
BUILDS = Counter(
    "trtops_builds_total",
    "Builds that reached an outcome (succeeded, cached, reused, failed), each counted once",
    ["outcome"],
)
DURATION = Histogram("trtops_reconcile_duration_seconds", "Wall time of one reconcile")
BUILD_SECONDS = Histogram(
    "trtops_build_duration_seconds",
    "Worker-reported duration of each finished, non-cached, successful build",
    ["namespace", "engine", "precision", "target"],
    buckets=BUILD_BUCKETS,
)
# Known label values start at 0, so rate()/increase() see the first one (a series that appears
# at 1 has no increase as far as Prometheus knows) and the panels show 0 instead of nothing.
for _outcome in OUTCOMES:
    BUILDS.labels(outcome=_outcome)
for _kind in ERROR_KINDS:
    ERRORS.labels(kind=_kind)


def record_reconcile(trigger: str, seconds: float, error: str | None = None) -> None:
    RECONCILES.labels(trigger=trigger).inc()
    DURATION.observe(seconds)
    if error is not None:
        ERRORS.labels(kind=error).inc()


class Once:
    """Remembers the last ``size`` keys it saw: ``first(key)`` is True only the first time.

    Bounded because a repeat only comes from a reconcile that ran moments after the first (before
    the watch delivered our own status patch), never from one that old.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True


_COUNTED = Once()


def record_builds(body: Mapping[str, Any], decision: Decision) -> None:
    """Count the builds ``decision`` saw finish (once per engine, Job and outcome) and time the
    successful ones; while the engine builds, start its duration series at 0 so the first build
    shows up in ``rate()``/``increase()`` too."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    owner = meta.get("uid") or (namespace, name)
    for o in decision.outcomes:
        if not _COUNTED.first((owner, o.job, o.outcome)):
            continue
        BUILDS.labels(outcome=o.outcome).inc()
        if o.outcome == "succeeded" and o.build_seconds is not None:
            BUILD_SECONDS.labels(namespace, name, o.precision, o.target).observe(o.build_seconds)
    status = decision.status if decision.status is not None else body.get("status") or {}
    if decision.create or _building(status):
        for precision, target in _build_labels(body):
            BUILD_SECONDS.labels(namespace, name, precision, target)


def _building(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Built" and c.get("reason") == "Building"
        for c in status.get("conditions") or []
    )


def _build_labels(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    try:
        spec = TrtEngineSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return []
    return [(spec.build.precision, keys.target_label(p)) for p in spec.target_products()]


# --- state, read at scrape time ---------------------------------------------------------------

# Returns kopf's ``engine_index``: (namespace, name) -> the engine bodies stored for it.
EngineSource = Callable[[], Mapping[Any, Iterable[Mapping[str, Any]]]]

PLAN_LABELS = ["namespace", "engine", "revision", "precision", "target", "output"]
WEIGHT_LABELS = ["namespace", "engine", "revision", "precision", "role"]
COST_LABELS = [*WEIGHT_LABELS, "currency"]


def snapshot(source: EngineSource | None, attempts: int = 3) -> list[Mapping[str, Any]]:
    """The engine bodies, copied so the watch may change the index meanwhile: the scrape runs in
    the metrics server's thread while kopf's event loop updates the index."""
    if source is None:
        return []
    for _ in range(attempts):
        try:
            index = source()
            out: list[Mapping[str, Any]] = []
            for key in list(index):
                try:
                    out.extend(list(index[key]))
                except KeyError:  # deleted since we listed the keys
                    continue
            return out
        except RuntimeError:  # "changed size during iteration": read again
            continue
    return []


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _precision(plans: Any) -> str:
    for p in plans or []:
        if isinstance(p, Mapping) and p.get("precision"):
            return str(p["precision"])
    return ""


class EngineCollector(Collector):
    """``trtops_plan_top1_agreement``, ``trtops_plan_mean_abs_error`` (per plan of the current
    revision and output, from ``status.plans[].accuracy``), ``trtops_canary_weight`` (percent
    of traffic per revision and role, from ``status.stable`` and ``status.canary``) and
    ``trtops_revision_pod_hourly_cost`` (price of one serving pod of each revision per hour, from
    the spec's resources and ``spec.cost`` or ``prices``; only where a price is set)."""

    def __init__(self, source: EngineSource | None = None, prices: Cost | None = None) -> None:
        self.source = source
        self.prices = prices

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "trtops_plan_top1_agreement",
                "Accuracy gate: share of validation samples whose top-1 class matches FP32",
                labels=PLAN_LABELS,
            ),
            GaugeMetricFamily(
                "trtops_plan_mean_abs_error",
                "Accuracy gate: mean absolute error of the plan's outputs against FP32",
                labels=PLAN_LABELS,
            ),
            GaugeMetricFamily(
                "trtops_canary_weight",
                "Percent of traffic the operator gives each revision (role stable or canary)",
                labels=WEIGHT_LABELS,
            ),
            GaugeMetricFamily(
                "trtops_revision_pod_hourly_cost",
                "Price of one serving pod of the revision for one hour (GPUs and CPU cores it"
                " requests at spec.cost or the operator's prices), in the currency label",
                labels=COST_LABELS,
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        top1, mae, weight, pod_cost = self._families()
        for body in snapshot(self.source):
            try:
                self._add(body, top1, mae, weight)
                self._add_cost(body, pod_cost)
            except (AttributeError, KeyError, TypeError, ValueError):
                continue  # one malformed status must not cost the whole scrape
        return iter((top1, mae, weight, pod_cost))

    def _add_cost(self, body: Mapping[str, Any], pod_cost: GaugeMetricFamily) -> None:
        spec = TrtEngineSpec.model_validate(body.get("spec") or {})
        prices = cost.prices_for(spec, self.prices)
        if prices is None:
            return
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        for role in ("stable", "canary"):
            side = status.get(role) or {}
            plans = [p for p in side.get("plans") or [] if isinstance(p, Mapping)]
            if not side.get("revision") or not plans:
                continue
            # Every target's pod requests the same (one GPU, or none): the first plan tells.
            pod = cost.serving_footprint(
                spec.serving, plans[0].get("backend"), plans[0].get("target")
            )
            labels = [str(meta.get("namespace") or ""), str(meta.get("name") or "")]
            labels += [str(side["revision"]), _precision(plans), role, prices.currency]
            pod_cost.add_metric(labels, cost.pod_hourly_cost(pod, prices))

    @staticmethod
    def _add(
        body: Mapping[str, Any],
        top1: GaugeMetricFamily,
        mae: GaugeMetricFamily,
        weight: GaugeMetricFamily,
    ) -> None:
        meta = body.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        status = body.get("status") or {}
        revision = str(status.get("revision") or "")
        for plan in status.get("plans") or []:
            outputs = ((plan.get("accuracy") or {}).get("outputs")) or {}
            for output, m in outputs.items():
                labels = [ns, name, revision, str(plan.get("precision") or "")]
                labels += [str(plan.get("target") or ""), str(output)]
                if (v := _float(m.get("top1Agreement"))) is not None:
                    top1.add_metric(labels, v)
                if (v := _float(m.get("meanAbsError"))) is not None:
                    mae.add_metric(labels, v)
        for role in ("stable", "canary"):
            side = status.get(role) or {}
            w = _float(side.get("weight"))
            if side.get("revision") and w is not None:
                labels = [ns, name, str(side["revision"]), _precision(side.get("plans")), role]
                weight.add_metric(labels, w)


ENGINES = EngineCollector()
REGISTRY.register(ENGINES)


def watch_engines(source: EngineSource, prices: Cost | None = None) -> None:
    """Read the engines from ``source`` at every scrape (the handlers pass kopf's index); cost
    engines without ``spec.cost`` at ``prices`` (the operator's)."""
    ENGINES.source = source
    ENGINES.prices = prices


_SERVER: list[Any] = []  # the running metrics server, for stop()


def serve(port: int, address: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Start the metrics HTTP server in a daemon thread."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    _SERVER.append(server)


def stop() -> None:
    """Stop the metrics server (an operator run in-process, as the tests do, frees its port)."""
    while _SERVER:
        server = _SERVER.pop()
        server.shutdown()
        server.server_close()
