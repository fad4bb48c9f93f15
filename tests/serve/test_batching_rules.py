"""The batcher's pure rules: which requests merge, how outputs split, when to dispatch."""

from __future__ import annotations

import numpy as np
import pytest
from trtops_worker.serve.batching import batch_key, batch_limit, decide, merge, split, take_batch
from trtops_worker.serve.errors import BackendError

A = (("input", "<f4", (3,)),)
B = (("input", "<f4", (4,)),)


@pytest.mark.parametrize(
    ("items", "max_batch", "expected"),
    [
        ([], 8, []),
        ([(A, 1)], 8, [0]),
        ([(A, 1), (A, 2), (A, 3)], 8, [0, 1, 2]),
        ([(A, 4), (A, 4), (A, 1)], 8, [0, 1]),  # stops at exactly full
        ([(A, 4), (A, 5), (A, 4)], 8, [0, 2]),  # a too-big one waits, a later fitting one joins
        ([(A, 1), (B, 1), (A, 1)], 8, [0, 2]),  # different trailing shape never merges
        ([(B, 1), (A, 1), (A, 1)], 8, [0]),
        ([(A, 9), (A, 1)], 8, [0]),  # bigger than a batch: runs alone
        ([(None, 1), (None, 1)], 8, [0]),  # unmergeable requests run alone
        ([(A, 1), (A, 1)], 1, [0]),  # batching off
    ],
)
def test_take_batch(items: list[tuple[object, int]], max_batch: int, expected: list[int]) -> None:
    assert take_batch(items, max_batch) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("queued", "free", "max_batch", "expected"),
    [
        (32, 1, 32, 32),  # one free instance takes a full batch
        (32, 2, 32, 16),  # two free instances share the queue evenly
        (33, 2, 32, 17),  # the first takes the odd row
        (64, 2, 32, 32),  # never over the max batch size
        (1, 2, 32, 1),
        (3, 4, 32, 1),  # more free instances than rows: one row each
        (5, 0, 8, 5),  # defensive: no free instance counts as one
    ],
)
def test_batch_limit(queued: int, free: int, max_batch: int, expected: int) -> None:
    assert batch_limit(queued, free, max_batch) == expected


@pytest.mark.parametrize(
    ("inputs", "key", "rows"),
    [
        ({"x": np.zeros((2, 3), np.float32)}, (("x", "<f4", (3,)),), 2),
        (
            {"x": np.zeros((2, 3), np.float32), "y": np.zeros((2,), np.int64)},
            (("x", "<f4", (3,)), ("y", "<i8", ())),
            2,
        ),
        (
            {"x": np.zeros((2, 3), np.float32), "y": np.zeros((1,), np.int64)},
            None,
            1,
        ),  # rows disagree
        ({"x": np.zeros((), np.float32)}, None, 1),  # scalar: no batch dim
    ],
)
def test_batch_key(inputs: dict[str, np.ndarray], key: object, rows: int) -> None:
    assert batch_key(inputs) == (key, rows)


def test_merge_then_split_round_trips_per_request() -> None:
    requests = [{"x": np.full((n, 2), n, np.float32), "y": np.arange(n)} for n in (1, 3, 2)]
    merged = merge(requests)
    assert merged["x"].shape == (6, 2)
    parts = split(merged, [1, 3, 2])
    for got, want in zip(parts, requests, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_split_rejects_outputs_that_lost_the_batch_dimension() -> None:
    with pytest.raises(BackendError):
        split({"out": np.zeros((5, 2))}, [1, 3, 2])


@pytest.mark.parametrize(
    ("queued", "now", "arrivals", "idle", "expected"),
    [
        (8, 0.0, 3, 0, "dispatch"),  # full
        (2, 1.0, 3, 0, "dispatch"),  # deadline passed
        (2, 0.0, 1, 0, "wait"),  # someone is sending: wait for them
        (2, 0.0, 0, 0, "yield"),  # give already-received requests a chance
        (2, 0.0, 0, 2, "dispatch"),  # nobody else coming: don't sit out the delay
    ],
)
def test_decide(queued: int, now: float, arrivals: int, idle: int, expected: str) -> None:
    assert (
        decide(
            queued_rows=queued,
            max_batch_size=8,
            now=now,
            deadline=0.5,
            arrivals=arrivals,
            idle_rounds=idle,
        )
        == expected
    )
