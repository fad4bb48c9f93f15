"""The one module that talks to Prometheus (HTTP API ``GET /api/v1/query``, aiohttp).

Every failure becomes a typed reason instead of an exception: an address the installer did not
allow -> ``PrometheusNotAllowed`` (nothing is sent); connection refused or DNS ->
``PrometheusUnreachable``; no answer within the timeout -> ``PrometheusTimeout``; Prometheus
refusing the query (``status: error``) -> ``QueryError``; anything that is not the API's JSON
(a redirect, an answer over :data:`MAX_RESPONSE_BYTES`) -> ``BadResponse``. :func:`analyse`
turns any of them into an ``Inconclusive`` verdict, which holds a rollout and never promotes or
rolls it back.

The address comes from a tenant's spec, so this is a request a tenant aims: it goes only to an
address the installer listed (``--prometheus-addresses``), redirects are not followed, the
answer is read in chunks and dropped past the cap, and nothing of the answer's body (nor the
address' user info) is put in a message, because messages land in status and Events.
:class:`AnalysisPool` runs analyses apart from the reconcile workers, a bounded number at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from trtops_operator.canary.analysis import (
    MIN_WINDOW_SECONDS,
    AgreementSample,
    InconclusiveReason,
    RevisionSample,
    Selector,
    Verdict,
    agreement_queries,
    evaluate,
    queries,
    window_seconds,
)
from trtops_operator.models import Analysis

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_RESPONSE_BYTES",
    "AnalysisPool",
    "PrometheusClient",
    "PrometheusError",
    "analyse",
    "check_address",
    "measure",
    "normalize_address",
]

DEFAULT_TIMEOUT_SECONDS = 5.0
# An instant query of one revision's outcomes or buckets answers in a few KiB; 1 MiB leaves room
# and still bounds what one answer can cost the operator (its memory limit is 512 MiB).
MAX_RESPONSE_BYTES = 1 << 20
_CHUNK = 64 << 10
# Prometheus' documented errorType values (HTTP API, "Format overview"); anything else is "other".
_ERROR_TYPES = {"bad_data", "timeout", "canceled", "execution", "internal", "unavailable"}
log = logging.getLogger(__name__)


class PrometheusError(Exception):
    """A query that gave no usable answer; ``reason`` says which kind of trouble."""

    def __init__(self, reason: InconclusiveReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: InconclusiveReason = reason
        self.message = message


def normalize_address(address: str) -> str:
    """``scheme://host[:port][/path]`` without a trailing slash, lower-case scheme and host.

    Raises ValueError (the message never repeats user info) for anything but an http(s) URL
    with a host and no user info, query or fragment.
    """
    try:
        parts = urlsplit(address.strip())
        port = parts.port  # reading it validates it
    except ValueError:
        raise ValueError("not a valid http(s) URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("needs http:// or https:// and a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("user info (user:password@) is not allowed in the address")
    if parts.query or parts.fragment or "?" in address or "#" in address:
        raise ValueError("a query string or fragment is not allowed in the address")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def check_address(address: str, allowed: Collection[str]) -> str:
    """The normalized address when the installer allowed it; else PrometheusError
    ``PrometheusNotAllowed`` (nothing is sent there)."""
    try:
        normal = normalize_address(address)
    except ValueError as exc:
        raise PrometheusError(
            "PrometheusNotAllowed", f"analysis.prometheus.address: {exc}"
        ) from None
    if normal not in {normalize_address(a) for a in allowed}:
        listed = ", ".join(sorted(allowed)) or "none"
        raise PrometheusError(
            "PrometheusNotAllowed",
            f"{normal} is not one of the Prometheus addresses the operator's installer allowed"
            f" ({listed}); ask them to add it (--prometheus-addresses)",
        )
    return normal


class PrometheusClient:
    """Instant queries against one Prometheus; use as ``async with``.

    ``address`` must already be checked (:func:`check_address`); answers over ``max_bytes``
    (after decompression) are dropped with ``BadResponse``.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.address = normalize_address(address)
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PrometheusClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
            headers=self._headers,
            trust_env=False,  # no proxies from the operator's environment
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
        try:
            return _number(result[0]["value"][1]) if result else None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError("BadResponse", f"malformed sample for {promql}") from exc

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
            async with self._session.get(url, params=params, allow_redirects=False) as resp:
                status = resp.status
                if 300 <= status < 400:
                    raise PrometheusError(
                        "BadResponse",
                        f"{self.address} answered HTTP {status}: redirects are refused",
                    )
                raw = await _read_capped(resp, self.max_bytes, self.address)
        except TimeoutError as exc:
            raise PrometheusError(
                "PrometheusTimeout", f"no answer from {self.address} in {self.timeout_seconds}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise PrometheusError(
                "PrometheusUnreachable", f"{self.address}: {type(exc).__name__}"
            ) from exc
        return _parse(raw, status, promql)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, address: str) -> bytes:
    """The body, read in chunks; PrometheusError once it passes ``cap`` bytes (never buffered
    whole: the declared length is checked first, the running total after every chunk)."""
    too_big = PrometheusError(
        "BadResponse",
        f"{address} answered with more than {cap} bytes; an instant query needs far less",
    )
    if resp.content_length is not None and resp.content_length > cap:
        raise too_big
    chunks: list[bytes] = []
    total = 0
    while chunk := await resp.content.read(_CHUNK):
        total += len(chunk)
        if total > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, status: int, promql: str) -> list[Any] | None:
    # Messages say what was wrong, never what the body said: they reach status and Events.
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested 100k deep
        raise PrometheusError(
            "BadResponse", f"HTTP {status}: the answer ({len(raw)} bytes) is not JSON"
        ) from exc
    if not isinstance(body, dict):
        raise PrometheusError("BadResponse", f"HTTP {status}: the answer is not a JSON object")
    if body.get("status") != "success":
        kind = body.get("errorType")
        kind = kind if kind in _ERROR_TYPES else "other"
        log.info(
            "Prometheus refused %s (HTTP %s, %s): %.300s", promql, status, kind, body.get("error")
        )
        raise PrometheusError(
            "QueryError", f"Prometheus refused the query (HTTP {status}, errorType {kind})"
        )
    try:
        data = body["data"]
        if data["resultType"] == "scalar":
            value = data["result"][1]
            return None if _number(value) is None else [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(
                "BadResponse", f"resultType {str(data['resultType'])[:16]!r}, wanted vector"
            )
        result = data["result"]
        if not isinstance(result, list):
            raise PrometheusError("BadResponse", f"result is not a list for {promql}")
        return result
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusError(
            "BadResponse", f"malformed result for {promql}: {type(exc).__name__}"
        ) from exc


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
