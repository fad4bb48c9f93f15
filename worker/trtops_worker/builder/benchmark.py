"""Self-benchmark helpers shared by the backends: latency percentiles and peak memory.

Peak memory on CPU is measured in a fresh process (:func:`in_fresh_process`): the growth of its
resident set from just before the model is loaded to its high-water mark (``VmHWM`` minus
``VmRSS``). Measured inside the build process, the figure was near zero: the gate's sessions had
just freed the memory the benchmark's session then reused without the RSS rising (0.65 MiB for a
39 MiB model). Native allocations (ONNX Runtime arenas) are invisible to tracemalloc, so RSS is
the honest measure. Where ``/proc`` cannot be read the figure is ``None``.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from trtops_worker.builder.model import TensorSpec

__all__ = [
    "MEMORY_METHOD",
    "RssGrowth",
    "feeds_for",
    "in_fresh_process",
    "latency_summary",
    "time_runs",
]

MEMORY_METHOD = "rss-growth-in-fresh-process"
_STATUS = Path("/proc/self/status")
T = TypeVar("T")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssGrowth:
    """``with RssGrowth() as peak: ...`` then ``peak.mib``: how far this process's RSS peaked
    above its size at entry. Meaningful in a fresh process (see the module docstring)."""

    def __init__(self) -> None:
        self.mib: float | None = None
        self._before: int | None = None

    def __enter__(self) -> RssGrowth:
        self._before = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM")
        if self._before is not None and peak is not None:
            self.mib = round(max(0, peak - self._before) / 1024, 2)


def in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a newly spawned Python process (importable function, picklable
    arguments and result); its exceptions are raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def time_runs(
    run: Callable[[], object], iterations: int, time_budget_s: float, warmup: int = 3
) -> list[float]:
    """Latencies (ms) of up to ``iterations`` runs, stopping early once the budget is spent."""
    for _ in range(warmup):
        run()
    latencies: list[float] = []
    deadline = time.perf_counter() + time_budget_s
    for _ in range(max(1, iterations)):
        start = time.perf_counter()
        run()
        latencies.append((time.perf_counter() - start) * 1000.0)
        if time.perf_counter() > deadline:
            break
    return latencies


def latency_summary(latencies_ms: list[float], batch_size: int) -> dict[str, Any]:
    a = np.asarray(latencies_ms)
    p50, p90, p95, p99 = (float(np.percentile(a, q)) for q in (50, 90, 95, 99))
    mean = float(a.mean())
    return {
        "batchSize": batch_size,
        "iterations": len(latencies_ms),
        "latencyMs": {
            "p50": round(p50, 4),
            "p90": round(p90, 4),
            "p95": round(p95, 4),
            "p99": round(p99, 4),
            "mean": round(mean, 4),
        },
        "throughputPerSecond": round(batch_size * 1000.0 / mean, 2) if mean > 0 else None,
    }


def feeds_for(
    inputs: tuple[TensorSpec, ...],
    batch_sizes: list[int],
    samples: dict[str, np.ndarray] | None,
    fallback_dims: dict[str, tuple[int, ...]],
) -> dict[int, dict[str, np.ndarray]]:
    """One input feed per batch size: real samples repeated to the batch size where there are
    any (values can change the work a model does), else seeded normals / zeros for integers.
    A model whose batch dimension is fixed is benchmarked at that size only.
    """
    rng = np.random.default_rng(0)
    fixed = {s.shape[0] for s in inputs if s.shape and s.shape[0] > 0}
    sizes = sorted(fixed) if fixed else sorted(set(batch_sizes))
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for n in sizes:
        feed: dict[str, np.ndarray] = {}
        for spec in inputs:
            if samples is not None and spec.name in samples and len(samples[spec.name]):
                src = samples[spec.name]
                reps = -(-n // len(src))
                feed[spec.name] = np.ascontiguousarray(np.concatenate([src] * reps)[:n])
                continue
            dims = list(fallback_dims.get(spec.name, spec.shape))
            dims = [n if i == 0 else (d if d > 0 else 1) for i, d in enumerate(dims)]
            if spec.numpy_dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(dims).astype(spec.numpy_dtype)
            else:
                feed[spec.name] = np.zeros(dims, spec.numpy_dtype)
        feeds[n] = feed
    return feeds
