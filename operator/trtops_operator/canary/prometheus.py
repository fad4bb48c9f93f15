"""The one module that talks to Prometheus (HTTP API ``GET /api/v1/query``, aiohttp).

Every failure becomes a typed reason instead of an exception: an address the installer did not
allow -> ``PrometheusNotAllowed`` (nothing is sent); connection refused or DNS ->
``PrometheusUnreachable``; no answer within the timeout -> ``PrometheusTimeout``; Prometheus
refusing the query (``status: error``) -> ``QueryError``; anything that is not the API's JSON
(a redirect, an answer over :data:`MAX_RESPONSE_BYTES`) -> ``BadResponse``.
:func:`trtops_operator.canary.runner.analyse` turns any of them into an ``Inconclusive``
verdict, which holds a rollout and never promotes or rolls it back.

The address comes from a tenant's spec, so this is a request a tenant aims: it goes only to an
address the installer listed (``--prometheus-addresses``), redirects are not followed, the
answer is read in chunks and dropped past the cap, and nothing of the answer's body (nor the
address' user info) is put in a message, because messages land in status and Events.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from trtops_operator.canary.verdict import InconclusiveReason

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_RESPONSE_BYTES",
    "PrometheusClient",
    "PrometheusError",
    "check_address",
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

    async def query_by(self, promql: str, label: str, at: float | None = None) -> dict[str, float]:
        """An instant vector query keyed by ``label``'s value (NaN samples dropped), evaluated
        now or at Unix time ``at``."""
        out: dict[str, float] = {}
        for series in await self._result(promql, at) or []:
            try:
                key = str(series["metric"].get(label, ""))
                value = _number(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise PrometheusError("BadResponse", f"malformed series for {promql}") from exc
            if value is not None:
                out[key] = value
        return out

    async def _result(self, promql: str, at: float | None = None) -> list[Any] | None:
        """The vector result of an instant query; None for a scalar NaN."""
        if self._session is None:
            raise RuntimeError("PrometheusClient used outside 'async with'")
        url = f"{self.address}/api/v1/query"
        # Prometheus stops evaluating by itself a little before we give up waiting.
        # (Whole milliseconds: Prometheus' duration syntax has no fractional seconds.)
        server_ms = int(max(self.timeout_seconds - 0.5, 0.5) * 1000)
        params = {"query": promql, "timeout": f"{server_ms}ms"}
        if at is not None:
            params["time"] = f"{at:.3f}"
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
