"""The one module that talks to Prometheus (HTTP API ``GET /api/v1/query``, aiohttp).

Every failure becomes a typed reason instead of an exception: connection refused or DNS ->
``PrometheusUnreachable``; no answer within the timeout -> ``PrometheusTimeout``; Prometheus
refusing the query (``status: error``) -> ``QueryError``; anything that is not the API's JSON ->
``BadResponse``. :func:`analyse` turns any of them into an ``Inconclusive`` verdict, which holds
a rollout and never promotes or rolls it back.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from trtops_operator.canary.analysis import (
    MIN_WINDOW_SECONDS,
    InconclusiveReason,
    RevisionSample,
    Selector,
    Verdict,
    evaluate,
    queries,
    window_seconds,
)
from trtops_operator.models import Analysis

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "PrometheusClient", "PrometheusError", "analyse", "measure"]

DEFAULT_TIMEOUT_SECONDS = 5.0


class PrometheusError(Exception):
    """A query that gave no usable answer; ``reason`` says which kind of trouble."""

    def __init__(self, reason: InconclusiveReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: InconclusiveReason = reason
        self.message = message


class PrometheusClient:
    """Instant queries against one Prometheus; use as ``async with``."""

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.address = address.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PrometheusClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_seconds), headers=self._headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query(self, promql: str) -> float | None:
        """The value of an instant query that yields at most one sample; None for no sample."""
        result = await self._result(promql)
        if result is None:
            return None
        if len(result) > 1:
            raise PrometheusError("BadResponse", f"{len(result)} series for {promql}, wanted 1")
        return _number(result[0]["value"][1]) if result else None

    async def query_by(self, promql: str, label: str) -> dict[str, float]:
        """An instant vector query keyed by ``label``'s value (NaN samples dropped)."""
        out: dict[str, float] = {}
        for series in await self._result(promql) or []:
            try:
                key = str(series["metric"].get(label, ""))
                value = _number(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise PrometheusError("BadResponse", f"malformed series for {promql}") from exc
            if value is not None:
                out[key] = value
        return out

    async def _result(self, promql: str) -> list[Any] | None:
        """The vector result of an instant query; None for a scalar NaN."""
        if self._session is None:
            raise RuntimeError("PrometheusClient used outside 'async with'")
        url = f"{self.address}/api/v1/query"
        # Prometheus stops evaluating by itself a little before we give up waiting.
        # (Whole milliseconds: Prometheus' duration syntax has no fractional seconds.)
        server_ms = int(max(self.timeout_seconds - 0.5, 0.5) * 1000)
        params = {"query": promql, "timeout": f"{server_ms}ms"}
        try:
            async with self._session.get(url, params=params) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError as exc:
            raise PrometheusError(
                "PrometheusTimeout", f"no answer from {self.address} in {self.timeout_seconds}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise PrometheusError("PrometheusUnreachable", f"{self.address}: {exc}") from exc
        return _parse(text, status, promql)


def _parse(text: str, status: int, promql: str) -> list[Any] | None:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise PrometheusError("BadResponse", f"HTTP {status}, not JSON: {text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise PrometheusError("BadResponse", f"HTTP {status}: unexpected body {text[:200]!r}")
    if body.get("status") != "success":
        kind = body.get("errorType", f"HTTP {status}")
        raise PrometheusError("QueryError", f"{kind}: {body.get('error', '')} (query: {promql})")
    try:
        data = body["data"]
        if data["resultType"] == "scalar":
            value = data["result"][1]
            return None if _number(value) is None else [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError("BadResponse", f"resultType {data['resultType']} for {promql}")
        result = data["result"]
        if not isinstance(result, list):
            raise PrometheusError("BadResponse", f"result is not a list for {promql}")
        return result
    except (KeyError, IndexError, TypeError) as exc:
        raise PrometheusError("BadResponse", f"malformed result for {promql}: {exc}") from exc


def _number(raw: Any) -> float | None:
    value = float(raw)  # Prometheus sends "NaN", "+Inf" as strings; float() reads them
    return None if math.isnan(value) else value


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


async def analyse(
    analysis: Analysis,
    *,
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

    ``model`` is the ``model`` label the workers export (the served model name); ``extra_labels``
    narrows the series further (for example ``{"namespace": ns}`` when the scrape config adds it).
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
        async with PrometheusClient(
            analysis.prometheus.address, timeout_seconds=timeout_seconds
        ) as client:
            canary_q = measure(client, Selector(model, canary_revision, extra), window)
            if stable_revision:
                canary, stable = await asyncio.gather(
                    canary_q, measure(client, Selector(model, stable_revision, extra), window)
                )
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
    )
