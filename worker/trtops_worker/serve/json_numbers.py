"""JSON ``data`` lists of numbers unboxed with ``struct.pack``: the JSON decoder's fast path.

After ``orjson.loads``, turning a request's ``data`` list into an array was ~40% of decoding an
image request. ``np.asarray(list, float64)`` infers a type per element; ``struct.pack`` converts
the Python numbers in one C loop to the same float64/int64 values, 2-3x cheaper
(bench/json_codec.py). Anything it cannot take exactly as numpy would (text, null, all-bool
lists, ragged or over-deep nesting, ints past int64) gives None, and the caller
(:mod:`.codec`) takes the general ``np.asarray`` path, so every tensor and every 400 message
stays what it was (tests/serve/test_json_fast_path.py).
"""

from __future__ import annotations

import struct
from functools import lru_cache, reduce
from operator import iadd
from typing import Any

import numpy as np

__all__ = ["packed"]

_MAX_NESTING = 32  # numpy 1.x's most dimensions (2.x: 64): deeper is the general path's error


def _leaves(data: list[Any], rank: int) -> list[Any] | None:
    """The leaves of ``data`` in row-major order when it nests regularly at most ``rank`` deep
    (as ``np.asarray`` would take it), else None: the caller then takes the general path."""
    rank = min(rank, _MAX_NESTING)
    while data and type(data[0]) is list:
        rank -= 1
        if rank < 1 or set(map(type, data)) != {list} or len(set(map(len, data))) != 1:
            return None
        data = reduce(iadd, data, [])  # list += list: 3x cheaper than list(chain(...))
    return data


_PACK_SLICE = 1 << 16  # numbers per struct.pack call: its argument tuple is 8 bytes a number


@lru_cache(maxsize=64)
def _packer(count: int, code: str) -> struct.Struct:
    # a bound Struct.pack(*leaves) copies the arguments once; struct.pack(fmt, *leaves) twice
    return struct.Struct(f"{count}{code}")


def packed(data: list[Any], rank: int, code: str) -> np.ndarray | None:
    """``data``'s numbers as one flat float64 (``code`` "d") or int64 ("q") array, or None for
    anything else (text, null, all-bool, nesting numpy would refuse, ints past int64).

    ``rank`` is the request's number of dimensions: ``data`` may nest at most that deep. The
    values are those ``np.asarray`` gives (the same C conversions; ints rounded to nearest as
    numpy does); the shape is the caller's to check and apply.
    """
    leaves = _leaves(data, rank)
    if not leaves or (code == "q" and type(leaves[0]) is bool):  # [true, ...] is BOOL to numpy
        return None
    try:
        if len(leaves) <= _PACK_SLICE:
            raw = _packer(len(leaves), code).pack(*leaves)
        else:
            parts = (leaves[i : i + _PACK_SLICE] for i in range(0, len(leaves), _PACK_SLICE))
            raw = b"".join(_packer(len(part), code).pack(*part) for part in parts)
    except (struct.error, OverflowError, TypeError):
        return None
    return np.frombuffer(raw, dtype=np.float64 if code == "d" else np.int64)
