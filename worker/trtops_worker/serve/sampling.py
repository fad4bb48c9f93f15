"""Request sampling: a uniform sample of the inputs this process answered, kept on the claim for
builds to calibrate and validate with (docs/experiments.md, "Request sampling").

Opt-in (``spec.serving.sampling``): the inputs are the clients' real data and may be sensitive
(docs/security.md). What is kept:

- **Which rows.** Algorithm R (Vitter, "Random sampling with a reservoir", ACM TOMS 11(1), 1985)
  over the rows (axis 0) of the answered requests of the current window: after ``n`` rows, each
  is in the sample with probability ``capacity / n``. The window restarts every
  ``window_seconds``, so the sample is uniform over *recent* requests, not over the process's
  life. Only rows of one shape are kept (the first row's per-input shapes and datatypes: a
  build concatenates them); other rows, BYTES inputs and failed requests are not sampled.
  Shadow copies (``trtops-shadow``) are never sampled: the data plane offers only its own
  clients' requests.
- **How much.** ``capacity = max_bytes // row bytes`` rows: the file never exceeds
  ``max_bytes`` (plus the ``.npz`` headers, a few hundred bytes per input).
- **Where.** ``<sample dir>/<revision>/<writer>.npz`` (``trtops_worker.sample_layout``), written
  to a temporary name, fsynced and renamed: a reader sees the previous file or the next, never
  half of one. A new window's sample replaces the file once it holds as many rows as the file
  does, so a build never finds fewer rows just after a window turned. Revision folders whose
  files are all older than ``retention_seconds`` are removed.

Never slows or fails a request: :meth:`Sampler.offer` appends a reference to a bounded queue
(a full queue drops the request, counted as ``dropped``); choosing rows, copying them and
writing the file happen in a background task and a thread. A write that fails (claim full,
read-only) is logged and counted, and serving goes on.

Metric: ``trtops_sample_rows_total{model, revision, outcome}``, outcome ``offered`` (rows
that reached the reservoir), ``dropped`` (queue full), ``skipped`` (another shape, BYTES, or
larger than ``max_bytes``), ``written`` (rows in files written), ``failed`` (rows in writes
that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from trtops_worker.sample_layout import SAMPLE_SUFFIX

from .background import BackgroundLoop

__all__ = ["Reservoir", "Sampler", "prune_revisions", "write_atomically"]

log = logging.getLogger(__name__)

Row = dict[str, np.ndarray]
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


def _signature(row: Mapping[str, np.ndarray]) -> Signature:
    return tuple(sorted((name, a.shape[1:], a.dtype.str) for name, a in row.items()))


class Reservoir:
    """Algorithm R over rows of one shape, at most ``max_bytes`` in all.

    ``seen``: rows offered to this window; ``rows``: the sample (each row a dict of arrays
    with one element on axis 0, copied: the request's buffers are not kept)."""

    def __init__(self, max_bytes: int, rng: random.Random) -> None:
        self.max_bytes = max_bytes
        self._rng = rng
        self.signature: Signature | None = None
        self.capacity = 0
        self.seen = 0
        self.rows: list[Row] = []

    def offer(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, int]:
        """Offer every row of one request; returns (rows offered, rows skipped)."""
        counts = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
        if not inputs or len(counts) != 1 or -1 in counts:
            return 0, 1  # scalars, or inputs that disagree on the sample axis
        rows = counts.pop()
        if any(a.dtype.kind not in "biuf" for a in inputs.values()):
            return 0, rows  # BYTES (objects) cannot go into an .npz a build loads without pickle
        signature = _signature(inputs)
        if self.signature is None:
            row_bytes = sum(a.nbytes // max(rows, 1) for a in inputs.values())
            self.signature = signature
            self.capacity = self.max_bytes // max(row_bytes, 1)
        if signature != self.signature or self.capacity == 0:
            return 0, rows
        for i in range(rows):
            self.seen += 1
            if len(self.rows) < self.capacity:
                slot = len(self.rows)
            else:
                slot = self._rng.randrange(self.seen)  # uniform in [0, seen)
                if slot >= self.capacity:
                    continue  # not kept: only now is anything copied
            row = {name: np.array(a[i : i + 1], copy=True) for name, a in inputs.items()}
            if slot == len(self.rows):
                self.rows.append(row)
            else:
                self.rows[slot] = row
        return rows, 0

    def arrays(self) -> dict[str, np.ndarray]:
        """The sample as one array per input (axis 0: the rows); empty when no row is kept."""
        if not self.rows:
            return {}
        return {name: np.concatenate([r[name] for r in self.rows]) for name in self.rows[0]}


def write_atomically(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as ``path`` (.npz): a temporary file in the same folder, fsynced, then
    renamed over ``path`` (readers never see half a file); the temporary is removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.npz: never read
    try:
        with temporary.open("wb") as f:
            np.savez(f, **cast(dict[str, Any], arrays))  # (numpy's stub types only its flag)
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def prune_revisions(root: Path, keep: str, retention_seconds: float, now: float) -> list[str]:
    """Remove the sample files of revision folders under ``root`` (other than ``keep``) whose
    files are all older than ``retention_seconds``, then the folders if empty. Only ``*.npz``
    and this module's temporaries are removed. Returns the folders emptied."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        if folder.name == keep or not folder.is_dir():
            continue
        files = [f for f in folder.iterdir() if f.name.endswith((SAMPLE_SUFFIX, ".tmp"))]
        with contextlib.suppress(OSError):
            if any(now - f.stat().st_mtime < retention_seconds for f in files):
                continue
            for f in files:
                f.unlink(missing_ok=True)
            folder.rmdir()
            removed.append(folder.name)
    return removed


class Sampler(BackgroundLoop):
    """Keeps the sample of one serving process and writes it every ``flush_seconds``.

    ``root``: the engine's sample folder (mounted writable at the pod's ``--sample-dir``);
    the file is ``root/<revision>/<writer>.npz``. ``queue_size``: requests waiting to be
    sampled at most; a full queue drops the newest."""

    def __init__(
        self,
        root: Path,
        *,
        revision: str,
        writer: str,
        model: str,
        max_bytes: int,
        registry: CollectorRegistry,
        window_seconds: float = 86400.0,
        flush_seconds: float = 60.0,
        retention_seconds: float = 7 * 86400.0,
        queue_size: int = 256,
        rng: random.Random | None = None,
    ) -> None:
        self.root = root
        self.revision = revision or "1"
        self.path = root / self.revision / f"{writer}{SAMPLE_SUFFIX}"
        self.max_bytes = max_bytes
        self.window_seconds = window_seconds
        self.flush_seconds = flush_seconds
        self.retention_seconds = retention_seconds
        self.queue_size = queue_size
        self._rng = rng or random.Random()  # noqa: S311 - sampling, not security
        self._queue: deque[Mapping[str, np.ndarray]] = deque()
        self._wake = asyncio.Event()
        self._window_started = time.monotonic()
        self.reservoir = Reservoir(max_bytes, self._rng)
        self._dirty = False
        self.rows_on_file = 0
        self._rows = Counter(
            "trtops_sample_rows",
            "Rows of answered requests by what sampling did with them.",
            ("model", "revision", "outcome"),
            registry=registry,
        )
        self._labels = (model, revision)

    def _count(self, outcome: str, rows: int) -> None:
        if rows:
            self._rows.labels(*self._labels, outcome).inc(rows)

    def offer(self, inputs: Mapping[str, np.ndarray]) -> bool:
        """Queue one answered request's inputs; O(1), no copy, no I/O. Whether it was queued."""
        if len(self._queue) >= self.queue_size:
            self._count("dropped", 1)
            return False
        self._queue.append(inputs)
        self._wake.set()
        return True

    async def close(self) -> None:
        """Stop, sample what is queued and write the file once more."""
        await self.stop_loop()
        self.drain()
        await asyncio.get_running_loop().run_in_executor(None, self.flush)

    def drain(self) -> None:
        """Move every queued request into the reservoir (a new window first, when due)."""
        if time.monotonic() - self._window_started >= self.window_seconds:
            self.reservoir = Reservoir(self.max_bytes, self._rng)
            self._window_started = time.monotonic()
        while self._queue:
            offered, skipped = self.reservoir.offer(self._queue.popleft())
            self._count("offered", offered)
            self._count("skipped", skipped)
            self._dirty = self._dirty or offered > 0

    def flush(self) -> bool:
        """Write the sample when it changed (and, in a new window, once it holds as many rows as
        the file); prune old revisions. Runs in a thread. Whether a file was written."""
        reservoir = self.reservoir
        rows = len(reservoir.rows)
        written = False
        if self._dirty and rows and rows >= min(self.rows_on_file, reservoir.capacity):
            try:
                write_atomically(self.path, reservoir.arrays())
            except OSError as e:  # a full or read-only claim: serving goes on
                log.warning("cannot write the request sample %s: %s", self.path, e)
                self._count("failed", rows)
            else:
                self._dirty, self.rows_on_file, written = False, rows, True
                self._count("written", rows)
        with contextlib.suppress(OSError):
            prune_revisions(self.root, self.revision, self.retention_seconds, time.time())
        return written

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self.flush_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(next_flush - loop.time(), 0.0))
            self._wake.clear()
            self.drain()
            if loop.time() >= next_flush:
                await loop.run_in_executor(None, self.flush)
                next_flush = loop.time() + self.flush_seconds
