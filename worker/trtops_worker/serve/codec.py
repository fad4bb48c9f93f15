"""OIP v2 tensors <-> numpy, with every check a client mistake can fail (pure, no I/O).

Decoding validates against the model's :class:`TensorSpec` list, so that anything reaching a
backend has the right names, dtypes, ranks and fixed dimensions. Every client mistake raises
:class:`InvalidInput`; nothing here lets a ``KeyError`` or ``ValueError`` escape as a 500.

Also implements Triton's binary tensor data extension for HTTP (``Inference-Header-Content-Length``
and ``binary_data_size``), which is what ``tritonclient.http`` sends by default.
BYTES elements' serialisation is in :mod:`.bytes_tensors`; the fast path for JSON lists of
numbers, in :mod:`.json_numbers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .bytes_tensors import bytes_elements, decode_bytes_tensor, encode_bytes_tensor
from .errors import InvalidInput, Unsupported

# codec._packed is the name tests/serve/test_json_fast_path.py and bench/json_codec.py patch to
# turn the fast path off
from .json_numbers import packed as _packed
from .types import DATATYPE_TO_NUMPY, InferRequest, InferResponse, TensorSpec, datatype_of

__all__ = [
    "bytes_elements",
    "check_parameters",
    "check_range",
    "check_tensor",
    "decode_bytes_tensor",
    "decode_json_request",
    "decode_raw",
    "encode_bytes_tensor",
    "encode_json_response",
    "encode_tensor",
    "json_data",
    "raw_bytes",
    "select_outputs",
]


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def check_tensor(spec: TensorSpec, datatype: str, shape: Sequence[int]) -> None:
    """Reject a tensor whose datatype or shape the model cannot take."""
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input '{spec.name}': datatype {datatype!r} does not match"
            f" the model's {spec.datatype!r}"
        )
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidInput(
            f"input '{spec.name}': shape {list(shape)} does not match"
            f" the model's {list(spec.shape)}"
        )


def decode_raw(spec: TensorSpec, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A raw little-endian, row-major buffer (gRPC ``raw_input_contents``, HTTP binary data)."""
    check_tensor(spec, datatype, shape)
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(raw, count, spec.name).reshape(shape)
    dtype = DATATYPE_TO_NUMPY[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{spec.name}': {len(raw)} bytes of data, shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    if datatype == "BOOL":
        flags = np.frombuffer(raw, dtype=np.uint8)
        if flags.size and flags.max() > 1:
            raise InvalidInput(f"input '{spec.name}': BOOL bytes must be 0 or 1")
    array = np.frombuffer(raw, dtype=dtype)
    if dtype.itemsize > 1 and np.little_endian is False:  # the wire is little-endian
        array = array.byteswap()
    return array.reshape(shape)


def raw_bytes(array: np.ndarray) -> bytes:
    """``array`` as it travels raw: BYTES length-prefixed, numbers little-endian, row-major."""
    if datatype_of(array) == "BYTES":
        return encode_bytes_tensor(array)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
        array = array.byteswap()
    return np.ascontiguousarray(array).tobytes()


def check_range(name: str, datatype: str, values: np.ndarray) -> np.ndarray:
    """``values`` (any numeric numpy array) as ``datatype``, refusing what it cannot hold.

    Integers must fit the type's range; floats must stay finite when finite (FP16 tops out at
    65504). Rounding a float to the nearest representable value is not refused: that is what
    sending a decimal number as FP32 means.
    """
    dtype = DATATYPE_TO_NUMPY[datatype]
    kind = values.dtype.kind
    if values.size == 0:
        return values.astype(dtype)
    if dtype.kind in "iu":
        if kind not in "iu":
            raise InvalidInput(f"input '{name}': {datatype} data must be integers")
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                f"input '{name}': {bad} does not fit {datatype} ({info.min}..{info.max})"
            )
        return values.astype(dtype)
    if kind not in "iuf":
        raise InvalidInput(f"input '{name}': {datatype} data must be numbers")
    if values.dtype == dtype:
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(dtype)
    finite = np.isfinite(out if dtype.kind == "f" else out.astype(np.float32))
    if finite.all():  # the common case: one pass over the converted values
        return out
    overflow = ~finite & np.isfinite(values.astype(np.float64))
    if overflow.any():
        bad = values.reshape(-1)[int(np.argmax(overflow.reshape(-1)))]
        raise InvalidInput(f"input '{name}': {bad} is out of the range of {datatype}")
    return out


def _big_integers(name: str, datatype: str, data: Any) -> np.ndarray:
    """JSON integers numpy could not hold as int64 (it turns ``[2**64 - 1, 0]`` into float64,
    losing the value): checked one by one as Python ints."""
    flat = np.asarray(data, dtype=np.object_).reshape(-1)
    if not all(type(x) is int for x in flat):
        raise InvalidInput(f"input '{name}': {datatype} data must be integers")
    info = np.iinfo(DATATYPE_TO_NUMPY[datatype])
    for x in flat:
        if not info.min <= x <= info.max:
            raise InvalidInput(
                f"input '{name}': {x} does not fit {datatype} ({info.min}..{info.max})"
            )
    return np.array(flat.tolist(), dtype=DATATYPE_TO_NUMPY[datatype]).reshape(
        np.shape(np.asarray(data, dtype=np.object_))
    )


def _json_array(spec: TensorSpec, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    check_tensor(spec, datatype, shape)
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=np.object_).reshape(-1)
            if flat.size and not all(isinstance(x, str) for x in flat):
                raise InvalidInput(f"input '{spec.name}': BYTES data must be strings")
            array = flat
        elif DATATYPE_TO_NUMPY[datatype].kind not in "biu":
            # floats: one C pass to float64 (struct's when all are numbers, else numpy's, which
            # reads numeric text ("1.5") as its number), then the range check
            numbers = _packed(data, len(shape), "d")
            if numbers is None:
                numbers = np.asarray(data, dtype=np.float64)
            if not np.isfinite(numbers).all():  # JSON has no NaN: null or "nan" text became one
                raise InvalidInput(f"input '{spec.name}': {datatype} data must be finite numbers")
            array = check_range(spec.name, datatype, numbers)
        else:
            # numpy infers the kind of the JSON values (bool, int, float, str, object for mixed or
            # too-large ints), which tells what the client sent before any conversion; ints that
            # all fit int64 are what it would infer as int64, packed without the inference
            packed = _packed(data, len(shape), "q") if datatype != "BOOL" else None
            found = np.asarray(data) if packed is None else packed
            if found.dtype.kind in "fO" and DATATYPE_TO_NUMPY[datatype].kind in "iu":
                found = _big_integers(spec.name, datatype, data)
            if datatype == "BOOL":
                if found.size and found.dtype.kind != "b":
                    raise InvalidInput(f"input '{spec.name}': BOOL data must be true or false")
                array = found.astype(np.bool_)
            else:
                array = check_range(spec.name, datatype, found)
    except InvalidInput:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise InvalidInput(
            f"input '{spec.name}': data is not {datatype} in a regular array: {e}"
        ) from None
    if array.size != count:
        raise InvalidInput(
            f"input '{spec.name}': {array.size} data elements, shape {list(shape)} needs {count}"
        )
    return array.reshape(shape)


# Parameters of Triton features this server does not implement. A client asking for one must
# hear so: ignoring ``sequence_id`` or ``classification`` would answer a different question.
_UNSUPPORTED = {
    "sequence_id": "sequence batching",
    "sequence_start": "sequence batching",
    "sequence_end": "sequence batching",
    "classification": "the classification extension",
    "shared_memory_region": "the shared-memory extension",
    "shared_memory_byte_size": "the shared-memory extension",
    "shared_memory_offset": "the shared-memory extension",
}


def check_parameters(parameters: Mapping[str, Any], where: str) -> None:
    """Refuse parameters asking for an unimplemented feature (a zero/false value asks nothing,
    as in Triton: ``sequence_id`` 0 means "no sequence")."""
    for key, value in parameters.items():
        feature = _UNSUPPORTED.get(key)
        if feature is not None and value not in (0, "", None):
            raise Unsupported(
                f"{where}: parameter '{key}' asks for {feature}, which this server does not"
                " implement"
            )


def decode_json_request(
    body: Any,
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    binary: bytes = b"",
) -> InferRequest:
    """Decode a parsed OIP v2 JSON request body (plus trailing binary data, if any)."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    inputs_json = body.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidInput("'inputs' must be a non-empty list")
    by_name = {s.name: s for s in specs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(inputs_json):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{i}]: 'name' must be a string")
        spec = by_name.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input '{name}'; the model takes {sorted(by_name)}")
        if name in inputs:
            raise InvalidInput(f"input '{name}' given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}': 'datatype' must be a string")
        shape = _shape(item.get("shape"), f"input '{name}'")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input '{name}': 'parameters' must be an object")
        check_parameters(params, f"input '{name}'")
        size = params.get("binary_data_size")
        if size is not None:
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or offset + size > len(binary)
            ):
                raise InvalidInput(f"input '{name}': binary_data_size does not fit the binary data")
            inputs[name] = decode_raw(spec, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            inputs[name] = _json_array(spec, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input '{name}': no 'data'")
    if offset != len(binary):
        raise InvalidInput("binary data left over after the last input")
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise InvalidInput(f"missing inputs {missing}")

    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    req_params = body.get("parameters") or {}
    if not isinstance(req_params, dict):
        raise InvalidInput("'parameters' must be an object")
    check_parameters(req_params, "request")
    binary_all = req_params.get("binary_data_output") is True
    requested: list[str] | None = None
    binary_outputs: set[str] = set()
    outputs_json = body.get("outputs")
    if outputs_json is not None:
        if not isinstance(outputs_json, list):
            raise InvalidInput("'outputs' must be a list")
        requested = []
        for i, out in enumerate(outputs_json):
            out_name = out.get("name") if isinstance(out, dict) else None
            if not isinstance(out_name, str) or out_name not in output_names:
                raise InvalidInput(
                    f"outputs[{i}]: unknown output; the model gives {list(output_names)}"
                )
            requested.append(out_name)
            out_params = out.get("parameters") or {}
            if isinstance(out_params, dict):
                check_parameters(out_params, f"output '{out_name}'")
            if binary_all or (
                isinstance(out_params, dict) and out_params.get("binary_data") is True
            ):
                binary_outputs.add(out_name)
    elif binary_all:
        binary_outputs = set(output_names)
    return InferRequest(
        inputs=inputs,
        id=request_id,
        outputs=requested,
        binary_outputs=frozenset(binary_outputs),
        parameters=req_params,
    )


def json_data(array: np.ndarray) -> list[Any]:
    """Flat, row-major JSON data for ``array`` (BYTES as UTF-8 text where it decodes; FP16 and
    BF16 as the floats they hold exactly)."""
    if array.dtype.kind in ("O", "S", "U"):
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in array.reshape(-1)
        ]
    if array.dtype == DATATYPE_TO_NUMPY["BF16"]:
        array = array.astype(np.float32)
    flat: list[Any] = array.reshape(-1).tolist()
    return flat


def encode_tensor(name: str, array: np.ndarray, *, binary: bool) -> tuple[dict[str, Any], bytes]:
    """One tensor of a JSON request or response: its entry, and with ``binary`` (the binary
    tensor data extension) its raw little-endian bytes to send after the JSON (else b"")."""
    entry: dict[str, Any] = {
        "name": name,
        "datatype": datatype_of(array),
        "shape": list(array.shape),
    }
    if not binary:
        entry["data"] = json_data(array)
        return entry, b""
    raw = raw_bytes(array)
    entry["parameters"] = {"binary_data_size": len(raw)}
    return entry, raw


def encode_json_response(
    response: InferResponse, binary_outputs: frozenset[str]
) -> tuple[dict[str, Any], bytes]:
    """The JSON response body, and the binary data after it (empty without binary outputs)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in response.outputs.items():
        entry, raw = encode_tensor(name, array, binary=name in binary_outputs)
        outputs.append(entry)
        chunks.append(raw)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    return body, b"".join(chunks)


def select_outputs(
    outputs: Mapping[str, np.ndarray], requested: Sequence[str] | None
) -> dict[str, np.ndarray]:
    if requested is None:
        return dict(outputs)
    return {name: outputs[name] for name in requested}
