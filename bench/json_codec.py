"""CPU per request of the OIP JSON codec: decoding an image request, encoding the logits.

The request is what ``trtops-worker bench --protocol http`` (and ``tritonclient.http`` with
``binary_data=False``) sends: one FP32 input ``[1, 3, px, px]`` as a flat ``data`` list written
by ``json.dumps`` (``", "`` separators, float32 values printed as the float64 they are, ~17
digits), at 32 px (3072 numbers) and 64 px (12288); ``nested`` is the same tensor as nested lists.

Each row is the process CPU per call (best of ``--rounds`` rounds, so other load on a shared
machine inflates it least), measured side by side in one run:

- ``orjson.loads``: parsing the body (the Python floats are made here);
- ``decode, general``: ``codec.decode_json_request`` with the fast path off (the code before it:
  ``np.asarray(list, float64)``);
- ``decode, fast``: the same call as served (``struct.pack`` of the numbers);
- ``np.fromstring span``: an alternative, the ``data`` text parsed by numpy without Python floats
  (no validation counted, so a lower bound for it);
- the response: ``encode_json_response`` + ``orjson.dumps`` as served (``tolist``), and
  ``orjson.OPT_SERIALIZE_NUMPY`` instead, with whether its bytes are the same.

``--handler`` adds the whole request path in process (``rest.create_handler`` over the data plane
with a one-thread ONNX Runtime instance, no HTTP): CPU per request outside inference, fast path
on and off alternately.

Usage::

    python bench/json_codec.py [--rounds 7] [--handler] [--requests 4000]

A script, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import orjson
from trtops_worker.serve import codec
from trtops_worker.serve.types import InferResponse, TensorSpec

SIZES = (32, 64)


def per_call_us(fn: Callable[[], object], rounds: int, seconds: float = 0.2) -> float:
    """Process CPU per call in microseconds, the best of ``rounds`` rounds of ~``seconds``."""
    calls = 1
    while True:  # calibrate: enough calls per round to be timed well
        started = time.process_time()
        for _ in range(calls):
            fn()
        spent = time.process_time() - started
        if spent >= seconds / 4:
            break
        calls *= 2
    calls = max(1, int(calls * seconds / max(spent, 1e-9)))
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e6


@contextmanager
def general_path() -> Iterator[None]:
    """``codec`` with the fast path off: every ``data`` list takes ``np.asarray``."""
    with mock.patch.object(codec, "_packed", return_value=None):
        yield


def request_body(image: np.ndarray, *, nested: bool) -> bytes:
    data = image.tolist() if nested else image.reshape(-1).tolist()
    tensor = {"name": "input", "datatype": "FP32", "shape": list(image.shape), "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def data_span(body: bytes) -> bytes:
    """The text between the brackets of the flat ``data`` list."""
    start = body.index(b"[", body.index(b'"data"')) + 1
    return body[start : body.index(b"]", start)]


def decode_rows(image: np.ndarray, rounds: int, rows: dict[str, list[float]]) -> None:
    """Adds this image's figures to ``rows``, flat and nested."""
    px = image.shape[-1]
    specs = [TensorSpec("input", "FP32", (-1, 3, px, px))]
    for nested in (False, True):
        body = request_body(image, nested=nested)
        parsed = orjson.loads(body)
        kind = "nested" if nested else "flat"
        decode = partial(codec.decode_json_request, parsed, specs, [])
        fast = decode().inputs["input"]
        with general_path():
            general = decode().inputs["input"]
            rows.setdefault(f"{kind}: decode, general", []).append(per_call_us(decode, rounds))
        assert np.array_equal(general, image)
        assert general.dtype == fast.dtype == np.float32
        assert np.array_equal(fast, general)
        rows.setdefault(f"{kind}: decode, fast", []).append(per_call_us(decode, rounds))
        loads = partial(orjson.loads, body)
        rows.setdefault(f"{kind}: orjson.loads", []).append(per_call_us(loads, rounds))
    span = data_span(request_body(image, nested=False))
    parse = partial(np.fromstring, span, dtype=np.float64, sep=",")
    assert np.array_equal(parse(), image.reshape(-1))
    rows.setdefault("flat: np.fromstring span", []).append(per_call_us(parse, rounds))


def codec_rows(rounds: int) -> None:
    rng = np.random.default_rng(0)
    print(f"{'case':<34} {'32 px':>10} {'64 px':>10}   (us of CPU per call)")
    rows: dict[str, list[float]] = {}
    for px in SIZES:
        decode_rows(rng.normal(0, 1, (1, 3, px, px)).astype(np.float32), rounds, rows)
    for name, figures in rows.items():
        print(f"{name:<34} " + " ".join(f"{us:>10.1f}" for us in figures))
    for kind in ("flat", "nested"):
        loads = rows[f"{kind}: orjson.loads"]
        before = [a + b for a, b in zip(loads, rows[f"{kind}: decode, general"], strict=True)]
        after = [a + b for a, b in zip(loads, rows[f"{kind}: decode, fast"], strict=True)]
        print(
            f"{kind + ': loads+decode before/after':<34} "
            + " ".join(f"{b:>5.0f}/{a:<4.0f}" for b, a in zip(before, after, strict=True))
            + "   ratio "
            + " ".join(f"{a / b:.2f}" for b, a in zip(before, after, strict=True))
        )
    logits = rng.normal(0, 1, (1, 10)).astype(np.float32)
    response = InferResponse("conv", "1", {"logits": logits}, id="42")
    served = orjson.dumps(codec.encode_json_response(response, frozenset())[0])

    def numpy_response() -> bytes:
        body = {
            "model_name": "conv",
            "model_version": "1",
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": logits.ravel()}
            ],
            "id": "42",
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    same = numpy_response() == served
    encode_us = per_call_us(
        lambda: orjson.dumps(codec.encode_json_response(response, frozenset())[0]), rounds
    )
    print(f"{'response [1,10], served (tolist)':<34} {encode_us:>10.1f}")
    print(
        f"{'response, OPT_SERIALIZE_NUMPY':<34} {per_call_us(numpy_response, rounds):>10.1f}"
        f"   same bytes: {same}"
        + ("" if same else f" ({served[90:130]!r} vs {numpy_response()[90:130]!r})")
    )


async def handler_row(px: int, requests: int, work: Path) -> None:
    """The JSON request path in process at ``px``: CPU per request outside inference, fast path
    on and off alternately (three runs each, so drifting load hits both alike)."""
    from trtops_worker import samples
    from trtops_worker.serve.backend import load_backend
    from trtops_worker.serve.dataplane import DataPlane, ServeConfig
    from trtops_worker.serve.metrics import Labels, ServeMetrics
    from trtops_worker.serve.rest import create_handler

    model = samples.save(
        samples.conv_classifier(width=48, depth=4, image_size=px), work / f"conv{px}.onnx"
    )
    loaded = load_backend("onnxruntime", model, intra_op_threads=1, spinning=False, sessions=1)
    config = ServeConfig(
        model_name="conv",
        max_batch_size=32,
        max_queue_delay_us=2000,
        max_queue_size=1024,
        intra_op_threads=1,
        instances=1,
    )
    metrics = ServeMetrics(Labels("conv", "", "", loaded.backend.name))
    dataplane = DataPlane(config, loaded, metrics)
    await dataplane.start()
    handle = create_handler(dataplane, max_body_bytes=1 << 24)
    image = np.random.default_rng(0).normal(0, 1, (1, 3, px, px)).astype(np.float32)
    body = request_body(image, nested=False)
    headers = {b"content-type": b"application/json", b"content-length": b"%d" % len(body)}

    async def read(limit: int) -> bytes:
        return body

    def inference_cpu() -> float:
        metrics.flush()
        return sum(
            s.value
            for family in metrics.compute_cpu.collect()
            for s in family.samples
            if s.name.endswith("_total")
        )

    async def run(count: int) -> float:
        done = 0

        async def client() -> None:
            nonlocal done
            while done < count:
                done += 1
                status, _, answer = await handle("POST", "/v2/models/conv/infer", headers.get, read)
                if status != 200:
                    raise RuntimeError(f"{status}: {answer[:200]!r}")

        cpu, inference = time.process_time(), inference_cpu()
        await asyncio.gather(*(client() for _ in range(32)))
        return 1e6 * (time.process_time() - cpu - (inference_cpu() - inference)) / done

    await run(requests // 4)  # warm-up
    figures: dict[str, list[float]] = {"general": [], "fast": []}
    for _ in range(3):
        with general_path():
            figures["general"].append(await run(requests))
        figures["fast"].append(await run(requests))
    await dataplane.close()
    print(
        f"handler {px} px, c=32, {requests} requests x3, CPU us/request outside inference:"
        f" general {' '.join(f'{us:.0f}' for us in figures['general'])},"
        f" fast {' '.join(f'{us:.0f}' for us in figures['fast'])}"
        f" (ratio of medians {np.median(figures['fast']) / np.median(figures['general']):.2f})"
    )


async def handler_rows(requests: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="json-codec-"))
    for px in SIZES:
        await handler_row(px, requests, work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--handler", action="store_true")
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    codec_rows(args.rounds)
    if args.handler:
        import uvloop

        uvloop.run(handler_rows(args.requests))


if __name__ == "__main__":
    main()
