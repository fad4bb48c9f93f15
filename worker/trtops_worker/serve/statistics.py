"""Triton's model statistics (its statistics extension) from this process's own counts, and
the sum of several front ends' (``GET /v2/models/stats``, gRPC ``ModelStatistics``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Statistics", "merge_model_stats"]


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class Statistics:
    """Triton's model statistics (its statistics extension), from this process's own counts.

    Field meanings follow Triton's ``ModelStatistics`` (``grpc_service.proto``): ``success`` and
    ``fail`` are requests with their total latency, ``queue`` and ``compute_infer`` are per
    request (a batch's compute time counts once for each request in it), ``inference_count``
    counts rows, ``execution_count`` batches, and ``batch_stats`` compute time per batch size.
    Input and output conversion happen outside the timed run, so ``compute_input`` and
    ``compute_output`` stay 0. Updated from the event loop and the instance threads: locked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success, self.fail, self.queue, self.compute = (_Duration() for _ in range(4))
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, _Duration] = {}

    def finished(self, seconds: float, *, success: bool) -> None:
        with self._lock:
            (self.success if success else self.fail).add(seconds)

    def dispatched(self, waits: Sequence[float]) -> None:
        with self._lock:
            self.queue.add(sum(waits), len(waits))

    def computed(self, seconds: float, requests: int, rows: int) -> None:
        with self._lock:
            self.compute.add(seconds * requests, requests)
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.batches.setdefault(rows, _Duration()).add(seconds)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list (HTTP JSON and, parsed, gRPC)."""
        zero = _Duration().as_json()
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_json(),
                    "fail": self.fail.as_json(),
                    "queue": self.queue.as_json(),
                    "compute_input": zero,
                    "compute_infer": self.compute.as_json(),
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": {"count": d.count, "ns": 0},
                        "compute_infer": d.as_json(),
                        "compute_output": {"count": d.count, "ns": 0},
                    }
                    for size, d in sorted(self.batches.items())
                ],
            }


def merge_model_stats(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' ``model_stats`` entries (same model) as one: counts and durations add
    up, ``last_inference`` is the latest (the server's front ends answer as one server)."""
    merged = json.loads(json.dumps(entries[0]))  # a deep copy of plain JSON
    batches = {b["batch_size"]: b for b in merged["batch_stats"]}
    for entry in entries[1:]:
        merged["last_inference"] = max(merged["last_inference"], entry["last_inference"])
        for key in ("inference_count", "execution_count"):
            merged[key] += entry[key]
        for key, value in entry["inference_stats"].items():
            for part in ("count", "ns"):
                merged["inference_stats"][key][part] += value[part]
        for batch in entry["batch_stats"]:
            mine = batches.get(batch["batch_size"])
            if mine is None:
                batches[batch["batch_size"]] = json.loads(json.dumps(batch))
                continue
            for key in ("compute_input", "compute_infer", "compute_output"):
                for part in ("count", "ns"):
                    mine[key][part] += batch[key][part]
    merged["batch_stats"] = [batches[size] for size in sorted(batches)]
    return merged  # type: ignore[no-any-return]
