"""Analysis runs: :func:`analyse` measures canary and stable through the Prometheus client
(:mod:`.prometheus`) and judges them (:func:`.analysis.evaluate`); any Prometheus trouble is an
``Inconclusive`` verdict, which holds a rollout and never promotes or rolls it back.
:class:`AnalysisPool` runs analyses apart from the reconcile workers, a bounded number at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from dataclasses import dataclass

from trtops_operator.canary.analysis import evaluate
from trtops_operator.canary.prometheus import (
    DEFAULT_TIMEOUT_SECONDS,
    PrometheusClient,
    PrometheusError,
    check_address,
)
from trtops_operator.canary.promql import (
    MIN_WINDOW_SECONDS,
    Selector,
    agreement_queries,
    queries,
    window_seconds,
)
from trtops_operator.canary.samples import AgreementSample, RevisionSample
from trtops_operator.canary.verdict import Verdict
from trtops_operator.models import Analysis

__all__ = ["AnalysisPool", "analyse", "measure", "measure_agreement"]

log = logging.getLogger(__name__)


async def measure(client: PrometheusClient, selector: Selector, window: int) -> RevisionSample:
    """Request counts by outcome and latency buckets of one revision, queried concurrently."""
    q = queries(selector, window)
    outcomes, buckets = await asyncio.gather(
        client.query_by(q.outcomes, "outcome"), client.query_by(q.buckets, "le")
    )
    try:
        return RevisionSample.from_vectors(outcomes, buckets, window)
    except ValueError as exc:  # an "le" that is not a number
        raise PrometheusError("BadResponse", f"bucket bounds of {q.buckets}: {exc}") from exc


async def measure_agreement(
    client: PrometheusClient, stable: Selector, canary_revision: str, window: int
) -> AgreementSample:
    """How the canary's outputs agreed with stable's on shadow requests, per output."""
    q = agreement_queries(stable, canary_revision, window)
    rows, cos, compared, agreed = await asyncio.gather(
        *(
            client.query_by(x, "output")
            for x in (q.cosine_count, q.cosine_sum, q.top1_compared, q.top1_agreed)
        )
    )
    return AgreementSample(rows, cos, compared, agreed)


async def analyse(
    analysis: Analysis,
    *,
    allowed: Collection[str],
    model: str,
    canary_revision: str,
    stable_revision: str | None,
    extra_labels: Mapping[str, str] | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    min_window_seconds: int | None = None,
    max_window_seconds: float | None = None,
    stable_note: str = "no stable revision to compare with",
) -> Verdict:
    """Measure canary and stable and judge the canary; Prometheus trouble -> Inconclusive.

    ``allowed`` are the Prometheus addresses the installer listed; any other address is
    ``Inconclusive``/``PrometheusNotAllowed`` and nothing is sent to it. ``model`` is the
    ``model`` label the workers export (the served model name); ``extra_labels`` narrows the
    series further (for example ``{"namespace": ns}`` when the scrape config adds it).
    ``max_window_seconds``: how long the canary's current weight has been in effect; the window
    never reaches back further. ``stable_revision=None`` skips the comparison (``stable_note``
    says why, e.g. the canary serves all traffic).
    """
    extra = dict(extra_labels or {})
    window = window_seconds(
        analysis.interval_seconds,
        MIN_WINDOW_SECONDS if min_window_seconds is None else min_window_seconds,
        max_window_seconds,
    )
    try:
        address = check_address(analysis.prometheus.address, allowed)
        async with PrometheusClient(address, timeout_seconds=timeout_seconds) as client:
            canary_q = measure(client, Selector(model, canary_revision, extra), window)
            agreement = None
            if stable_revision:
                stable_sel = Selector(model, stable_revision, extra)
                canary, stable = await asyncio.gather(canary_q, measure(client, stable_sel, window))
                if (
                    analysis.shadow is not None
                    and analysis.slo
                    and analysis.slo.min_output_agreement
                ):
                    agreement = await measure_agreement(client, stable_sel, canary_revision, window)
            else:
                canary, stable = await canary_q, None
    except PrometheusError as exc:
        return Verdict.make_inconclusive(exc.reason, exc.message)
    return evaluate(
        canary,
        stable,
        slo=analysis.slo,
        judge=analysis.judge,
        min_requests=analysis.min_requests,
        stable_note=stable_note,
        agreement=agreement,
        min_shadow_samples=analysis.shadow.min_samples if analysis.shadow else 1,
    )


@dataclass
class _Running:
    token: Hashable
    task: asyncio.Task[Verdict]


class AnalysisPool:
    """Analyses run here, at most ``size`` at once, never inside a reconcile worker.

    A reconcile asks :meth:`poll` for the verdict of a due analysis: the first call starts it
    and answers None, and once it has finished ``on_ready(key)`` wakes the engine, whose next
    reconcile gets the verdict. ``token`` says which analysis is meant (the canary's revision
    and step): a verdict for an older token is dropped. Each analysis gets ``deadline_seconds``
    from its start, waiting for a slot not included, so a Prometheus that never answers costs a
    slot for at most that long and no reconcile waits for it at all.
    """

    def __init__(
        self, size: int, on_ready: Callable[[Hashable], None], *, deadline_seconds: float = 15.0
    ) -> None:
        self._slots = asyncio.Semaphore(max(size, 1))
        self._on_ready = on_ready
        self._deadline = deadline_seconds
        self._running: dict[Hashable, _Running] = {}

    def poll(
        self, key: Hashable, token: Hashable, start: Callable[[], Awaitable[Verdict]]
    ) -> Verdict | None:
        """The verdict for (key, token) once finished (handed out once), else None."""
        run = self._running.get(key)
        if run is not None and run.token == token:
            if not run.task.done():
                return None
            del self._running[key]
            return run.task.result()
        if run is not None:
            run.task.cancel()
        task = asyncio.get_running_loop().create_task(self._run(key, start))
        self._running[key] = _Running(token, task)
        return None

    def forget(self, key: Hashable) -> None:
        """Drop the engine's analysis (deleted, or no canary any more)."""
        run = self._running.pop(key, None)
        if run is not None:
            run.task.cancel()

    @property
    def in_flight(self) -> int:
        return sum(1 for r in self._running.values() if not r.task.done())

    async def _run(self, key: Hashable, start: Callable[[], Awaitable[Verdict]]) -> Verdict:
        try:
            async with self._slots:
                try:
                    return await asyncio.wait_for(start(), self._deadline)
                except TimeoutError:
                    return Verdict.make_inconclusive(
                        "PrometheusTimeout", f"the analysis took over {self._deadline:g}s"
                    )
                except Exception as exc:  # a bug must not leave the rollout waiting forever
                    log.exception("analysis of %s crashed", key)
                    return Verdict.make_inconclusive("BadResponse", type(exc).__name__)
        finally:
            self._on_ready(key)

    async def close(self) -> None:
        tasks = [r.task for r in self._running.values()]
        self._running.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
