"""Measuring an experiment's arms in Prometheus (through the one Prometheus module,
:mod:`trtops_operator.canary.prometheus`), apart from the reconcile workers.

Per arm over the experiment so far (``window`` seconds, from its start): request outcomes and
latency buckets (the worker's ``trtops_request_duration_seconds``; shadow requests are not in
them), output agreement of each variant with the baseline (``trtops_shadow_*``, exported by the
baseline's pods), and where NVIDIA's DCGM exporter runs, ``DCGM_FI_DEV_FB_USED`` (framebuffer
memory in use, MiB; the max over the arm's pods) and ``DCGM_FI_DEV_GPU_UTIL`` (percent; the
mean), matched by the exporter's ``namespace`` and ``pod`` labels (dcgm-exporter's Kubernetes
mode). On CPU nodes there is no such series and the figures read "not reported".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field

from trtops_operator.canary.prometheus import PrometheusClient, PrometheusError, check_address
from trtops_operator.canary.promql import Selector, promql_string
from trtops_operator.canary.runner import measure, measure_agreement
from trtops_operator.cost import PodFootprint, Prices, cost_per_million, pod_hourly_cost
from trtops_operator.experiment.judge import ArmSample

__all__ = ["Arm", "MeasurePool", "gpu_queries", "measure_arms"]

log = logging.getLogger(__name__)
DCGM_MEMORY = "DCGM_FI_DEV_FB_USED"
DCGM_UTIL = "DCGM_FI_DEV_GPU_UTIL"


@dataclass(frozen=True)
class Arm:
    """One arm to measure: its name, precision, revision, weight, Deployment (its pods' name
    prefix) and what each of its pods requests (for its cost)."""

    name: str
    precision: str
    revision: str
    weight: int
    deployment: str
    footprint: PodFootprint = field(default_factory=PodFootprint)
    stopped: str = ""


def gpu_queries(namespace: str, deployment: str, window: int) -> tuple[str, str]:
    """(framebuffer MiB in use: the max over the run and the arm's GPUs, utilisation percent:
    the mean) of the pods of ``deployment`` (named ``<deployment>-<replicaset hash>-<5
    chars>``), from dcgm-exporter's series with its Kubernetes pod labels."""
    pods = (
        f"{{namespace={promql_string(namespace)},"
        f"pod=~{promql_string(deployment + '-[a-z0-9]+-[a-z0-9]+')}}}"
    )
    return (
        f"max(max_over_time({DCGM_MEMORY}{pods}[{window}s]))",
        f"avg(avg_over_time({DCGM_UTIL}{pods}[{window}s]))",
    )


async def measure_arms(
    address: str,
    *,
    allowed: Collection[str],
    model: str,
    namespace: str,
    arms: Sequence[Arm],
    window: int,
    prices: Prices | None = None,
    replicas: int = 1,
    timeout_seconds: float = 5.0,
) -> tuple[ArmSample, ...]:
    """Every arm (the baseline first) over the last ``window`` seconds; with ``prices``, its
    cost per 1M inferences (``replicas`` pods of the arm's footprint at the successful requests
    per second it served). Raises :class:`PrometheusError` (its message is safe for status)."""
    checked = check_address(address, allowed)
    extra = {"namespace": namespace}
    base = Selector(model, arms[0].revision, extra)
    async with PrometheusClient(checked, timeout_seconds=timeout_seconds) as client:

        async def one(arm: Arm, first: bool) -> ArmSample:
            sample = await measure(client, Selector(model, arm.revision, extra), window)
            agreement = None
            if not first:
                agreement = await measure_agreement(client, base, arm.revision, window)
            memory_q, util_q = gpu_queries(namespace, arm.deployment, window)
            memory, util = await client.query(memory_q), await client.query(util_q)
            per_million = pod_hourly = None
            if prices is not None:
                pod_hourly = pod_hourly_cost(arm.footprint, prices)
                per_million = cost_per_million(
                    arm.footprint, replicas, prices, sample.successes / max(window, 1)
                )
            return ArmSample(
                arm.name,
                arm.precision,
                arm.revision,
                arm.weight,
                sample,
                agreement,
                gpu_memory_mib=memory,
                gpu_utilization_percent=util,
                cost_per_million=per_million,
                pod_hourly_cost=pod_hourly,
                stopped=arm.stopped,
            )

        return tuple(await asyncio.gather(*(one(a, i == 0) for i, a in enumerate(arms))))


class MeasurePool:
    """At most one measurement per engine in flight, never inside a reconcile worker (as
    :class:`~trtops_operator.canary.runner.AnalysisPool` does for canary analyses): the
    first :meth:`poll` starts it, ``on_ready(key)`` wakes the engine, the next poll gets it."""

    def __init__(self, on_ready: Callable[[Hashable], None], deadline_seconds: float = 20.0):
        self._on_ready = on_ready
        self._deadline = deadline_seconds
        self._running: dict[Hashable, tuple[Hashable, asyncio.Task[object]]] = {}

    def poll(
        self, key: Hashable, token: Hashable, start: Callable[[], Awaitable[object]]
    ) -> object | None:
        """The result for (key, token) once finished (an exception is returned, not raised)."""
        run = self._running.get(key)
        if run is not None and run[0] == token:
            if not run[1].done():
                return None
            del self._running[key]
            return run[1].result()
        if run is not None:
            run[1].cancel()
        task = asyncio.get_running_loop().create_task(self._run(key, start))
        self._running[key] = (token, task)
        return None

    def forget(self, key: Hashable) -> None:
        run = self._running.pop(key, None)
        if run is not None:
            run[1].cancel()

    async def _run(self, key: Hashable, start: Callable[[], Awaitable[object]]) -> object:
        try:
            return await asyncio.wait_for(start(), self._deadline)
        except PrometheusError as exc:
            return exc
        except TimeoutError:
            return PrometheusError("PrometheusTimeout", f"took over {self._deadline:g}s")
        except Exception as exc:  # a bug must not leave the experiment unmeasured forever
            log.exception("experiment measurement of %s crashed", key)
            return PrometheusError("BadResponse", type(exc).__name__)
        finally:
            self._on_ready(key)
