"""One bad request never fails the good requests batched with it.

An embedding lookup (Gather over a 10-row table) with dynamic batching: a request holding an id
outside the table makes ONNX Runtime refuse the whole merged batch. The batcher bisects the
failed batch, so only that request fails, with 400 (counted ``client_error``), and every other
request gets the rows its ids select, as if it had run alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.worker import Server, start_server

from .models import TABLE, lookup_model


@pytest.fixture(scope="module")
def lookup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("lookup")
    server = start_server(
        tmp,
        "--model",
        str(lookup_model(tmp / "lookup.onnx")),
        "--model-name",
        "lookup",
        "--max-batch-size",
        "32",
        "--max-queue-delay-us",
        "100000",
        "--max-queue-size",
        "256",
    )
    yield server
    assert server.stop() == 0


def body(ids: list[int]) -> dict[str, object]:
    return {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [len(ids), 1], "data": ids}]}


def send_all(server: Server, requests_: list[list[int]]) -> list[requests.Response]:
    def post(ids: list[int]) -> requests.Response:
        return requests.post(server.infer_url("lookup"), json=body(ids), timeout=30)

    with ThreadPoolExecutor(len(requests_)) as pool:
        return list(pool.map(post, requests_))


def solo(ids: list[int]) -> np.ndarray:
    """What the model answers for ``ids`` alone (Gather: the table's rows)."""
    return TABLE[np.array(ids)].reshape(len(ids), 1, 4)


def check(responses: list[requests.Response], requests_: list[list[int]], bad: int) -> None:
    for i, (response, ids) in enumerate(zip(responses, requests_, strict=True)):
        if i == bad:
            assert response.status_code == 400, response.text
            assert "the model refused the input values" in response.json()["error"]
            continue
        assert response.status_code == 200, (i, response.text)
        (out,) = response.json()["outputs"]
        np.testing.assert_array_equal(
            np.array(out["data"], np.float32).reshape(out["shape"]), solo(ids)
        )


def test_one_bad_id_among_16_concurrent_requests_fails_only_its_request(lookup: Server) -> None:
    before = {
        o: lookup.metric("trtops_requests_total", outcome=o)
        for o in ("success", "client_error", "server_error")
    }
    batches_before = lookup.metric("trtops_batch_size_count")
    rows_before = lookup.metric("trtops_batch_size_sum")
    for round_ in range(3):
        requests_ = [[(i + round_) % 10, -1 - i % 10] for i in range(16)]
        requests_[5 + round_] = [3, 12]  # 12 is outside the 10-row table
        check(send_all(lookup, requests_), requests_, bad=5 + round_)
    after = {o: lookup.metric("trtops_requests_total", outcome=o) for o in before}
    assert after["success"] - before["success"] == 45
    assert after["client_error"] - before["client_error"] == 3
    assert after["server_error"] == before["server_error"]
    # the requests really were merged (else there was nothing to isolate)
    batches = lookup.metric("trtops_batch_size_count") - batches_before
    rows = lookup.metric("trtops_batch_size_sum") - rows_before
    assert rows / batches > 2, (rows, batches)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    n=st.integers(2, 12),
    bad_id=st.integers(10, 10**6) | st.integers(-(10**6), -11),
)
def test_a_poisoned_request_among_n_good_ones(
    lookup: Server, data: st.DataObject, n: int, bad_id: int
) -> None:
    """Property: wherever the poisoned request lands, each good answer equals its solo run."""
    good = st.lists(st.integers(-10, 9), min_size=1, max_size=4)
    requests_ = [data.draw(good) for _ in range(n)]
    bad = data.draw(st.integers(0, n - 1))
    ids = requests_[bad]
    requests_[bad] = [*ids, bad_id][-4:] if len(ids) < 4 else [*ids[:3], bad_id]
    check(send_all(lookup, requests_), requests_, bad)


def test_server_errors_are_still_500(tmp_path: Path) -> None:
    """The classification blames the client only for value errors: a model that cannot run at
    all (a Reshape to an impossible shape) answers 500, counted ``server_error``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([7, 7], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "broken.onnx"))
    server = start_server(
        tmp_path, "--model", str(tmp_path / "broken.onnx"), "--model-name", "broken"
    )
    try:
        response = requests.post(
            server.infer_url("broken"),
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
            timeout=10,
        )
        assert response.status_code == 500, response.text
        assert server.metric("trtops_requests_total", outcome="server_error") == 1
    finally:
        assert server.stop() == 0
