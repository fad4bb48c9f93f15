"""Dynamic batching's rules, as pure functions (table-tested in tests/serve/test_batching_rules.py):
which requests may merge (:func:`batch_key`), which form the next batch (:func:`take_batch`,
:func:`batch_limit`), when it leaves (:func:`decide`), how inputs merge and outputs split
(:func:`merge`, :func:`split`), and what a backend failure becomes (:func:`as_serve_error`).
serve/batching.py's :class:`~trtops_worker.serve.batching.Batcher` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from .errors import BackendError, ServeError

__all__ = [
    "Decision",
    "Key",
    "Tensors",
    "as_serve_error",
    "batch_key",
    "batch_limit",
    "decide",
    "merge",
    "split",
    "take_batch",
]

Tensors = Mapping[str, np.ndarray]
# Requests merge only when every input has the same name, dtype and trailing shape.
Key = tuple[tuple[str, str, tuple[int, ...]], ...]


def batch_key(inputs: Tensors) -> tuple[Key | None, int]:
    """``(key, rows)``; key is None when the inputs disagree on the batch dim (never merged)."""
    if len(inputs) == 1:  # most models: no set, no sort
        ((name, a),) = inputs.items()
        if not a.ndim:
            return None, 1
        return ((name, a.dtype.str, a.shape[1:]),), a.shape[0]
    rows = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    if len(rows) != 1 or -1 in rows:
        return None, 1
    key = tuple(sorted((name, a.dtype.str, tuple(a.shape[1:])) for name, a in inputs.items()))
    return key, rows.pop()


def take_batch(items: Sequence[tuple[Key | None, int]], max_batch_size: int) -> list[int]:
    """Indexes of the queued ``(key, rows)`` items forming the next batch, oldest first.

    The oldest item always goes (alone if it cannot merge or is bigger than a batch); later items
    join while they share its key and fit in ``max_batch_size`` rows. Items that do not fit stay
    queued in order, so a big request cannot starve behind small ones forever.
    """
    if not items:
        return []
    key, rows = items[0]
    chosen = [0]
    if key is None or rows >= max_batch_size:
        return chosen
    total = rows
    for i in range(1, len(items)):
        k, r = items[i]
        if k == key and total + r <= max_batch_size:
            chosen.append(i)
            total += r
            if total == max_batch_size:
                break
    return chosen


def batch_limit(queued_rows: int, free_instances: int, max_batch_size: int) -> int:
    """Rows the next batch may take: the queued rows shared evenly over the free instances.

    One instance taking everything while another sits idle would halve throughput with
    ``--instances 2`` whenever the whole load arrives at once (every client waiting on the same
    batch); an even share keeps every instance computing, each on a smaller batch.
    """
    share = -(-queued_rows // max(1, free_instances))  # ceiling division
    return max(1, min(max_batch_size, share))


def merge(batch: Sequence[Tensors]) -> dict[str, np.ndarray]:
    if len(batch) == 1:
        return dict(batch[0])
    return {name: np.concatenate([b[name] for b in batch], axis=0) for name in batch[0]}


def split(outputs: Tensors, rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Cut merged outputs back into per-request outputs.

    Views, not copies: each response is encoded right after the split, so a view pins the
    batch's output arrays only for that long.
    """
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BackendError(f"output '{name}' has {array.shape} rows, the batch had {total}")
    parts: list[dict[str, np.ndarray]] = [{} for _ in rows]
    for name, array in outputs.items():
        start = 0
        for part, n in zip(parts, rows, strict=True):
            part[name] = array[start : start + n]
            start += n
    return parts


Decision = Literal["dispatch", "yield", "wait"]


def decide(
    *,
    queued_rows: int,
    max_batch_size: int,
    now: float,
    deadline: float,
    arrivals: int,
    idle_rounds: int,
) -> Decision:
    """What the batcher does next while the backend is free and a batch is forming.

    ``dispatch``: full, out of time, or nothing else arrived for two event-loop rounds.
    ``wait``: requests are being read right now: sleep until one lands or the deadline.
    ``yield``: let the event loop run once more, so requests already received can join.
    """
    if queued_rows >= max_batch_size or now >= deadline:
        return "dispatch"
    if arrivals > 0:
        return "wait"
    return "dispatch" if idle_rounds >= 2 else "yield"


def as_serve_error(error: Exception) -> ServeError:
    """A backend bug fails its requests as a 500, never the batcher's loop."""
    if isinstance(error, ServeError):
        return error
    return BackendError(f"inference failed: {type(error).__name__}: {error}")
