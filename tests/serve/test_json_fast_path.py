"""JSON ``data`` lists decode to exactly what they did before the fast path, errors included.

The fast path (``codec._packed``: ``struct.pack`` of the numbers) must be invisible to a client:
for every datatype, shape and kind of value, the tensor (dtype, shape and bits) or the 400
message is the one the general path (``np.asarray``) gives. Bodies are parsed with ``orjson`` as
the server does, so text-level cases (whitespace, exponents, -0.0, "data" inside a string) go
through the same code as a request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trtops_worker.serve import codec
from trtops_worker.serve.errors import InvalidInput
from trtops_worker.serve.types import DATATYPE_TO_NUMPY, TensorSpec

NUMERIC = sorted(d for d in DATATYPE_TO_NUMPY if d != "BYTES")


@contextmanager
def general_path() -> Iterator[None]:
    with mock.patch.object(codec, "_packed", return_value=None):
        yield


def outcome(decode: Callable[[], np.ndarray]) -> tuple[Any, ...]:
    """What a client sees: the tensor's dtype, shape and bytes, or the error message."""
    try:
        array = decode()
    except InvalidInput as e:
        return ("refused", str(e))
    return ("tensor", array.dtype.str, array.shape, array.tobytes())


def decode(datatype: str, shape: list[int], data: Any) -> np.ndarray:
    spec = TensorSpec("x", datatype, tuple([-1] * len(shape)))
    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    return codec.decode_json_request(body, [spec], ["y"]).inputs["x"]


def both(datatype: str, shape: list[int], data: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    fast = outcome(lambda: decode(datatype, shape, data))
    with general_path():
        general = outcome(lambda: decode(datatype, shape, data))
    return fast, general


def nest(flat: list[Any], shape: list[int]) -> Any:
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


LEAVES = {
    "floats": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "floats32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "small ints": st.integers(-300, 300),
    "ints": st.integers(-(2**70), 2**70),
    "bools": st.booleans(),
    "anything": st.one_of(
        st.floats(),
        st.integers(-(2**70), 2**70),
        st.booleans(),
        st.none(),
        st.sampled_from(["1.5", "nan", "x", ""]),
        st.lists(st.floats(), max_size=2),
        st.dictionaries(st.just("a"), st.integers(), max_size=1),
    ),
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, list[int], Any]:
    datatype = draw(st.sampled_from(NUMERIC))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    count = int(np.prod(shape))
    kind = draw(st.sampled_from(sorted(LEAVES)))
    mixed = draw(st.booleans())  # a homogeneous list (mostly accepted) or one odd value in it
    flat = draw(st.lists(LEAVES[kind], min_size=count, max_size=count))
    if mixed:
        flat[draw(st.integers(0, count - 1))] = draw(LEAVES["anything"])
    layout = draw(st.sampled_from(["flat", "nested", "short", "ragged"]))
    if layout == "short":
        return datatype, shape, flat[:-1]
    data = nest(flat, shape) if layout != "flat" else flat
    if layout == "ragged" and isinstance(data[0], list) and len(data[0]) > 1:
        data[0] = data[0][:-1]
    return datatype, shape, data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_every_datatype_shape_and_value_decodes_as_the_general_path(
    request: tuple[str, list[int], Any],
) -> None:
    fast, general = both(*request)
    assert fast == general


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize(
    "data",
    [
        [0.0, -0.0, 1.0, -1.0],
        [1, 2, 3, 4],
        [1, 2.5, 3, 4],
        [True, 2, 3, 4],
        [True, False, True, True],
        [65504.0, -65504.0, 65520.0, 1e-45],
        [3.4028234663852886e38, 3.5e38, 0.0, 1.0],
        [2**53 + 1, 2**63 - 1, -(2**63), 0],
        [2**63, 2**64 - 1, 0, 1],
        [2**64, 0, 0, 0],
        [10**400, 0, 0, 0],
        [255, 256, -1, 0],
        [127, -128, 128, 0],
        [None, 1.0, 2.0, 3.0],
        ["1.5", 1.0, 2.0, 3.0],
        [float("inf"), 1.0, 2.0, 3.0],
        [float("nan"), 1.0, 2.0, 3.0],
        [[1.0, 2.0], [3.0, 4.0]],
        [[1.0, 2.0], [3.0]],
        [[1.0, 2.0], 3.0, 4.0],
        [[[1.0, 2.0]], [[3.0, 4.0]]],
        [[1.0], [2.0], [3.0], [4.0]],
        [[], [], [], []],
    ],
)
def test_edge_values_decode_and_fail_as_the_general_path(datatype: str, data: list[Any]) -> None:
    fast, general = both(datatype, [4], data)
    assert fast == general
    nested_fast, nested_general = both(datatype, [2, 2], data)
    assert nested_fast == nested_general


def test_nesting_deeper_than_numpy_allows_is_still_refused() -> None:
    data: Any = [1.0]
    for _ in range(70):
        data = [data]
    shape = [1] * 71
    fast, general = both("FP32", shape, data)
    assert fast == general


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", [None, 1.0], "FP32 data must be finite numbers"),
        ("FP16", [70000.0, 1.0], "70000.0 is out of the range of FP16"),
        ("INT8", [200, 1], "200 does not fit INT8 (-128..127)"),
        ("UINT64", [-1, 1], "-1 does not fit UINT64 (0..18446744073709551615)"),
        ("INT32", [1.5, 1], "INT32 data must be integers"),
        ("INT32", [True, False], "INT32 data must be integers"),
        ("BOOL", [1, 0], "BOOL data must be true or false"),
        ("FP32", [[1.0, 2.0], [3.0]], "regular array"),
        ("FP32", [1.0, 2.0, 3.0], "3 data elements, shape [2] needs 2"),
    ],
)
def test_client_mistakes_keep_their_400_messages(datatype: str, data: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as e:
        decode(datatype, [2], data)
    with general_path(), pytest.raises(InvalidInput) as before:
        decode(datatype, [2], data)
    assert str(e.value) == str(before.value)


def test_text_as_numbers_bools_as_ints_and_ints_as_floats_still_decode() -> None:
    np.testing.assert_array_equal(decode("FP32", [2], ["1.5", 2]), np.array([1.5, 2], np.float32))
    np.testing.assert_array_equal(decode("INT32", [2], [True, 2]), np.array([1, 2], np.int32))
    assert decode("FP64", [1], [2**53 + 1])[0] == float(2**53 + 1)


@pytest.mark.parametrize(
    "text",
    [
        # what json.dumps writes (", "), compact, and whitespace of every JSON kind
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": DATA}]}',
        '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":DATA}]}',
        '{\n "inputs" : [ {\t"data"\r\n:\tDATA , "name":"x","datatype":"FP32","shape":[1,4]} ] }',
        # "data" inside strings before the real one: the id, and a parameter's value
        '{"id": "\\"data\\": [9, 9, 9, 9]", "parameters": {"note": "data: [1]"},'
        ' "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": DATA}]}',
    ],
    ids=["json.dumps", "compact", "whitespace", "data-in-strings"],
)
@pytest.mark.parametrize(
    "data",
    [
        "[1.5, -0.0, 0.1, 3]",
        "[1e3,-2.5E-3,1E+2,0.0]",
        "[ 1.25 ,\n -7 ,\t1e-400 , 123456789012345678901234567890 ]",
        "[[1.5, -0.0], [0.1, 3]]",
        "[0.12573021650314331, -0.13210485875606537, 0.6404226422309875, 3.4028234e38]",
    ],
)
def test_request_text_decodes_to_the_values_a_decimal_reader_gives(text: str, data: str) -> None:
    body = orjson.loads(text.replace("DATA", data))
    spec = TensorSpec("x", "FP32", (-1, 4))
    got = codec.decode_json_request(body, [spec], ["y"]).inputs["x"]
    want = np.array(json.loads(data), dtype=np.float64).astype(np.float32).reshape(1, 4)
    assert got.dtype == np.float32
    assert got.shape == (1, 4)
    assert got.tobytes() == want.tobytes()  # bit for bit: -0.0 keeps its sign
    if "-0.0" in data:
        assert np.signbit(got.reshape(-1)[1])


def test_json_has_no_nan_or_infinity_and_out_of_range_text_is_refused() -> None:
    for text in ("[NaN, 1]", "[Infinity, 1]", "[1e400, 1]"):
        with pytest.raises(orjson.JSONDecodeError):  # rest.py answers these 400 malformed JSON
            orjson.loads(text)
    with pytest.raises(InvalidInput, match="finite"):
        decode("FP32", [2], orjson.loads("[null, 1]"))


def test_a_large_request_decodes_in_slices_to_the_same_tensor() -> None:
    values = np.random.default_rng(0).normal(0, 1, 150_000).astype(np.float32)
    got = decode("FP32", [150_000], orjson.loads(orjson.dumps(values.tolist())))
    assert got.tobytes() == values.tobytes()
