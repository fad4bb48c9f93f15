"""The compact result the operator reads from the pod's termination message.

Kubernetes keeps at most 4096 bytes of a termination message, so the result is trimmed
deterministically (the same input always gives the same bytes) until it fits: first the
per-batch benchmark rows beyond the first, then per-output accuracy details beyond a summary,
then versions, then the message text. The full report stays in ``metadata.json``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["LIMIT_BYTES", "compact", "failure", "write_termination_log"]

LIMIT_BYTES = 4096


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def failure(category: str, reason: str, message: str) -> dict[str, Any]:
    return {"ok": False, "category": category, "reason": reason, "message": message}


def compact(result: dict[str, Any], limit: int = LIMIT_BYTES) -> str:
    """``result`` as JSON of at most ``limit`` bytes."""
    data = copy.deepcopy(result)
    text = _dumps(data)
    steps = [
        _trim_benchmark,
        _trim_accuracy,
        _drop("versions"),
        _drop("device"),
        _trim_message,
        _trim_comparison,
    ]
    for step in steps:
        if len(text.encode()) <= limit:
            return text
        step(data, limit)
        text = _dumps(data)
    if len(text.encode()) > limit:  # still too long: keep only what the operator keys on
        keep = (
            "ok",
            "key",
            "path",
            "artifact",
            "sha256",
            "precision",
            "backend",
            "cached",
            "category",
            "reason",
            "comparison",  # a scheduled rebuild's regression gate reads it
        )
        text = _dumps({k: data[k] for k in keep if k in data} | {"truncated": True})
    return text


def _trim_benchmark(data: dict[str, Any], limit: int) -> None:
    bench = data.get("benchmark")
    if isinstance(bench, dict) and isinstance(bench.get("batches"), list):
        bench["batches"] = bench["batches"][:1]
        data["truncated"] = True


def _trim_accuracy(data: dict[str, Any], limit: int) -> None:
    acc = data.get("accuracy")
    if isinstance(acc, dict) and isinstance(acc.get("outputs"), dict):
        acc["outputs"] = dict(sorted(acc["outputs"].items())[:1])
        data["truncated"] = True


def _drop_of(sides: Any) -> float:
    """How far an output's agreement with FP32 fell from the serving plan's (largest metric)."""
    drops = [
        float(s) - float(c)
        for key in ("top1Agreement", "cosineSimilarity")
        if isinstance(s := (sides.get("serving") or {}).get(key), int | float)
        and isinstance(c := (sides.get("candidate") or {}).get(key), int | float)
    ]
    return max(drops, default=0.0)


def _trim_comparison(data: dict[str, Any], limit: int) -> None:
    """A rebuild's comparison keeps its outputs that fell most (the regression gate's verdict
    stays the same: the worst decide it)."""
    comparison = data.get("comparison")
    if isinstance(comparison, dict) and isinstance(comparison.get("outputs"), dict):
        worst = sorted(comparison["outputs"].items(), key=lambda kv: -_drop_of(kv[1]))[:3]
        comparison["outputs"] = dict(worst)
        data["truncated"] = True


def _drop(field: str) -> Any:
    def step(data: dict[str, Any], limit: int) -> None:
        if field in data:
            del data[field]
            data["truncated"] = True

    return step


def _trim_message(data: dict[str, Any], limit: int) -> None:
    message = data.get("message")
    if isinstance(message, str):
        overflow = len(_dumps(data).encode()) - limit
        if overflow > 0:
            data["message"] = message[: max(0, len(message) - overflow - 3)] + "..."


def write_termination_log(path: Path, text: str) -> None:
    """Best effort: outside a pod the default path may not exist, which must not fail the build."""
    try:
        path.write_text(text)
    except OSError as exc:
        print(f"trtops-worker: cannot write termination log {path}: {exc}", file=sys.stderr)
