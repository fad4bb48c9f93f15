"""BYTES tensors on the wire: 4-byte little-endian length-prefixed elements <-> numpy object arrays.

The serialisation of Triton's raw BYTES data (gRPC ``raw_input_contents``, the HTTP binary
tensor data extension). Elements reach the model as ``str``; one that is not UTF-8 raises
:class:`InvalidInput` naming the input.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from .errors import InvalidInput

__all__ = ["bytes_elements", "decode_bytes_tensor", "encode_bytes_tensor"]


def _text(item: bytes, name: str, index: int) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"input '{name}': BYTES element {index} is not valid UTF-8 ({e.reason} at byte"
            f" {e.start}); the model's string tensors take text"
        ) from None


def bytes_elements(items: Sequence[bytes], name: str) -> np.ndarray:
    """BYTES elements as the model takes them: ``str`` (ONNX string tensors are text).

    ONNX Runtime prints a ``bytes`` element (``b'a'`` arrives as the text ``"b'a'"``), so every
    element is decoded here, and one that is not UTF-8 is refused naming the input.
    """
    out = np.empty(len(items), dtype=np.object_)
    out[:] = [_text(item, name, i) for i, item in enumerate(items)]
    return out


def decode_bytes_tensor(raw: bytes, count: int, name: str) -> np.ndarray:
    """BYTES elements serialised as a 4-byte little-endian length, then the bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element runs past the end of the data")
        items.append(raw[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{name}': {len(items)} BYTES elements, shape needs {count}")
    return bytes_elements(items, name)


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    """``array``'s elements (``bytes``, else their ``str`` as UTF-8), row-major, each after its
    4-byte little-endian length."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)
