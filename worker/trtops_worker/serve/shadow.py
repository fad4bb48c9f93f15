"""Shadow traffic: a share of live requests also sent to the candidate revision, and its outputs
compared with what this (stable) pod answered (docs/experiments.md, "Shadow agreement").

The client never waits for the shadow: :meth:`ShadowSender.offer` only appends to a bounded
queue (dropping the request when the queue is full) after the client's answer is computed, and
one background task sends the queue to the candidate. Shadow requests carry the
``trtops-shadow`` header, so the candidate leaves them out of its request metrics (its latency
and error SLOs) and never shadows them again. The candidate's revision is read from its answer
(``model_version``, OIP v2), so the same address (the ``<engine>-canary`` Service) serves every
canary and no pod restarts when a canary begins or ends; an answer from this pod's own revision
(the canary's own pods) is not compared.

Metrics, per revision pair (``revision`` = this pod's, ``candidate_revision`` = the answer's) and
per ``output``:

- ``trtops_shadow_cosine`` (histogram): cosine similarity of each row (dimension 0) of the
  output, flattened; 1 = same direction. ``_sum / _count`` is the mean over rows.
- ``trtops_shadow_top1_compared_total`` / ``trtops_shadow_top1_agreed_total``: positions (all
  dimensions but the last) compared, and those whose arg-max over the last dimension agrees;
  only for outputs whose last dimension is > 1 (class scores, logits).
- ``trtops_shadow_max_abs_error`` (histogram): the largest ``|stable - candidate|`` of each
  compared request.
- ``trtops_shadow_requests_total{outcome}``: ``compared``, ``dropped`` (queue full),
  ``failed`` (candidate unreachable or erred), ``mismatch`` (shapes or outputs differ),
  ``self`` (answered by this revision), ``paused`` (not sent while paused after a failure).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from .background import BackgroundLoop
from .codec import decode_raw
from .types import DATATYPE_TO_NUMPY, TensorSpec

__all__ = [
    "SHADOW_HEADER",
    "Agreement",
    "ShadowMetrics",
    "ShadowSender",
    "compare",
    "http_sender",
]

log = logging.getLogger(__name__)

SHADOW_HEADER = "trtops-shadow"
COSINE_BUCKETS = (0.0, 0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
ABS_ERROR_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Agreement:
    """How one output of the candidate agrees with stable's on one request.

    ``cosines``: one cosine similarity per row (dimension 0; a scalar output is one row), in
    [-1, 1]. ``top1_compared``/``top1_agreed``: positions whose arg-max over the last dimension
    was compared / agreed (0/0 when the last dimension has one element). ``max_abs_error``: the
    largest absolute difference (inf when either side has NaN where the other has not)."""

    cosines: tuple[float, ...]
    top1_compared: int
    top1_agreed: int
    max_abs_error: float


class Mismatch(ValueError):
    """The candidate answered other outputs, or other shapes, than stable."""


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1) if a.ndim == 0 else a.reshape(a.shape[0], -1)


def compare(
    stable: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> dict[str, Agreement]:
    """Per numeric output of ``stable``: its :class:`Agreement` with ``candidate``'s.

    Outputs of non-numeric datatypes (BYTES) are left out. Raises :class:`Mismatch` when the
    candidate lacks an output or answers another shape."""
    out: dict[str, Agreement] = {}
    for name, s in stable.items():
        if s.dtype.kind not in "biuf" and s.dtype != DATATYPE_TO_NUMPY["BF16"]:
            continue
        c = candidate.get(name)
        if c is None:
            raise Mismatch(f"candidate answered no output {name!r}")
        if c.shape != s.shape:
            raise Mismatch(f"output {name!r}: candidate shape {c.shape}, stable {s.shape}")
        s64, c64 = s.astype(np.float64), c.astype(np.float64)
        if s64.size == 0:
            continue
        rs, rc = _rows(s64), _rows(c64)
        with np.errstate(invalid="ignore", over="ignore"):
            dot = np.einsum("ij,ij->i", rs, rc)
            norms = np.linalg.norm(rs, axis=1) * np.linalg.norm(rc, axis=1)
            cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
        # two all-zero rows agree; NaN (either side) counts as no agreement
        both_zero = ~rs.any(axis=1) & ~rc.any(axis=1)
        cos = np.where(both_zero, 1.0, np.nan_to_num(cos, nan=0.0))
        cos = np.clip(cos, -1.0, 1.0)
        diff = np.abs(s64 - c64)
        same_nan = np.isnan(s64) & np.isnan(c64)
        diff = np.where(same_nan, 0.0, diff)
        max_err = float(np.nan_to_num(diff, nan=math.inf).max())
        compared = agreed = 0
        if s64.ndim >= 1 and s64.shape[-1] > 1:
            ts = s64.reshape(-1, s64.shape[-1]).argmax(axis=1)
            tc = c64.reshape(-1, c64.shape[-1]).argmax(axis=1)
            compared, agreed = int(ts.size), int((ts == tc).sum())
        out[name] = Agreement(tuple(float(x) for x in cos), compared, agreed, max_err)
    return out


class ShadowMetrics:
    """The shadow metrics above, registered on ``registry`` (the serving metrics' registry)."""

    def __init__(self, model: str, revision: str, registry: CollectorRegistry) -> None:
        self.model, self.revision = model, revision
        pair = ("model", "revision", "candidate_revision", "output")
        self.requests = Counter(
            "trtops_shadow_requests",
            "Shadow requests by outcome.",
            ("model", "revision", "outcome"),
            registry=registry,
        )
        self.cosine = Histogram(
            "trtops_shadow_cosine",
            "Cosine similarity of each output row, candidate against stable.",
            pair,
            registry=registry,
            buckets=COSINE_BUCKETS,
        )
        self.top1_compared = Counter(
            "trtops_shadow_top1_compared",
            "Positions whose arg-max over the last dimension was compared.",
            pair,
            registry=registry,
        )
        self.top1_agreed = Counter(
            "trtops_shadow_top1_agreed",
            "Positions whose arg-max over the last dimension agreed with stable.",
            pair,
            registry=registry,
        )
        self.max_abs_error = Histogram(
            "trtops_shadow_max_abs_error",
            "Largest absolute difference per compared request, candidate against stable.",
            pair,
            registry=registry,
            buckets=ABS_ERROR_BUCKETS,
        )

    def outcome(self, outcome: str) -> None:
        self.requests.labels(self.model, self.revision, outcome).inc()

    def record(self, candidate_revision: str, agreement: Mapping[str, Agreement]) -> None:
        for name, a in agreement.items():
            labels = (self.model, self.revision, candidate_revision, name)
            hist = self.cosine.labels(*labels)
            for c in a.cosines:
                hist.observe(c)
            if a.top1_compared:
                self.top1_compared.labels(*labels).inc(a.top1_compared)
                self.top1_agreed.labels(*labels).inc(a.top1_agreed)
            self.max_abs_error.labels(*labels).observe(a.max_abs_error)
        self.outcome("compared")


# (inputs) -> (candidate revision, every output); raises on any failure.
Send = Callable[[Mapping[str, np.ndarray]], Awaitable[tuple[str, dict[str, np.ndarray]]]]


class ShadowSender(BackgroundLoop):
    """Sends a ``percent`` share of offered requests to the candidate, one at a time, from a
    bounded queue; never blocks the caller.

    ``queue_size``: requests waiting at most (a full queue drops the new one: ``dropped``).
    ``pause_seconds``: after a failure or an answer from this pod's own revision, nothing is
    sent for this long (no canary exists, or this pod is the canary: one probe per pause)."""

    def __init__(
        self,
        send: Send,
        metrics: ShadowMetrics,
        *,
        percent: float,
        queue_size: int = 64,
        pause_seconds: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._send = send
        self.metrics = metrics
        self.share = max(0.0, min(percent, 100.0)) / 100.0
        self._queue: deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = deque()
        self.queue_size = queue_size
        self.pause_seconds = pause_seconds
        self._paused_until = 0.0
        self._rng = rng or random.Random()  # noqa: S311 - sampling, not security
        self._wake = asyncio.Event()

    def offer(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bool:
        """Maybe queue one answered request (its inputs and stable's outputs); O(1), no I/O.
        Returns whether it was queued."""
        if self.share <= 0 or self._rng.random() >= self.share:
            return False
        if time.monotonic() < self._paused_until:
            self.metrics.outcome("paused")
            return False
        if len(self._queue) >= self.queue_size:
            self.metrics.outcome("dropped")
            return False
        self._queue.append((inputs, outputs))
        self._wake.set()
        return True

    async def close(self) -> None:
        await self.stop_loop()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            inputs, stable = self._queue.popleft()
            await self.shadow_one(inputs, stable)

    async def shadow_one(self, inputs: dict[str, np.ndarray], stable: dict[str, np.ndarray]) -> str:
        """Send one request to the candidate and record the comparison; returns the outcome."""
        try:
            revision, candidate = await self._send(inputs)
        except Exception as e:  # any failure of the candidate is counted, never raised
            log.debug("shadow request failed: %s", e)
            self._paused_until = time.monotonic() + self.pause_seconds
            self.metrics.outcome("failed")
            return "failed"
        if revision == self.metrics.revision:
            self._paused_until = time.monotonic() + self.pause_seconds
            self.metrics.outcome("self")
            return "self"
        try:
            agreement = compare(stable, candidate)
        except Mismatch as e:
            log.info("shadow answer from %s does not match: %s", revision, e)
            self.metrics.outcome("mismatch")
            return "mismatch"
        self.metrics.record(revision, agreement)
        return "compared"


def decode_response(body: bytes, header_length: int | None) -> tuple[str, dict[str, np.ndarray]]:
    """An OIP v2 JSON response with binary outputs -> (model_version, outputs)."""
    head, raw = (
        (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    )
    parsed = orjson.loads(head)
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for o in parsed["outputs"]:
        spec = TensorSpec(o["name"], o["datatype"], tuple(o["shape"]))
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            dtype = DATATYPE_TO_NUMPY[o["datatype"]]
            outputs[spec.name] = np.asarray(o["data"], dtype=dtype).reshape(spec.shape)
            continue
        outputs[spec.name] = decode_raw(
            spec, o["datatype"], spec.shape, raw[offset : offset + size]
        )
        offset += size
    return str(parsed.get("model_version", "")), outputs


def http_sender(
    url: str, revision: str, timeout_s: float = 10.0
) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """A :data:`Send` posting to ``url`` (the candidate's ``/v2/models/<model>/infer``) with the
    binary tensor data extension and the shadow header; and a coroutine closing its session."""
    import aiohttp  # the worker's HTTP client; imported here so the server starts without it

    from trtops_worker.bench.clients import http_infer_body

    session: list[aiohttp.ClientSession] = []

    async def send(inputs: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
        if not session:
            # A new connection per shadow request: a Service (kube-proxy) picks a pod per
            # connection, so a kept-alive one would send every shadow to one pod (one canary
            # replica, one of an experiment's variants).
            session.append(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True),
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                )
            )
        body, head = http_infer_body(dict(inputs), binary=True)  # every output as raw bytes
        headers = {
            "Inference-Header-Content-Length": str(head),
            "Content-Type": "application/octet-stream",
            SHADOW_HEADER: revision or "1",
        }
        async with session[0].post(url, data=body, headers=headers, allow_redirects=False) as r:
            data = await r.read()
            if r.status != 200:
                raise RuntimeError(f"candidate answered {r.status}: {data[:200]!r}")
            length = r.headers.get("Inference-Header-Content-Length")
            return decode_response(data, int(length) if length else None)

    async def close() -> None:
        if session:
            await session[0].close()

    return send, close
