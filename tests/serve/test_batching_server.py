"""Dynamic batching, overload and timeouts, seen from outside the server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from trtops_worker.serve.batching import Batcher

from .conftest import Server, conv_input, infer_body, start_server
from .test_rest import reference


def test_concurrent_requests_merge_and_results_equal_unbatched(
    server: Server, model_dir: Path
) -> None:
    count_before = server.metric("trtops_batch_size_count")
    sum_before = server.metric("trtops_batch_size_sum")
    inputs = [conv_input(1 + i % 2, seed=100 + i) for i in range(24)]

    def send(x: np.ndarray) -> np.ndarray:
        with requests.Session() as session:
            response = session.post(server.infer_url(), json=infer_body(x), timeout=30)
        assert response.status_code == 200, response.text
        return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(len(x), 10)

    with ThreadPoolExecutor(12) as pool:
        outputs = list(pool.map(send, inputs))
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(out, reference(model_dir, x))  # exact, not approximate
    batches = server.metric("trtops_batch_size_count") - count_before
    rows = server.metric("trtops_batch_size_sum") - sum_before
    assert rows == sum(len(x) for x in inputs)
    assert batches < len(inputs), "no two requests were merged"


def test_overload_rejects_with_503_at_once_and_keeps_serving(
    model_dir: Path, tmp_path: Path
) -> None:
    s = start_server(
        tmp_path,
        "--model",
        str(model_dir / "slow.onnx"),
        "--model-name",
        "slow",
        "--max-batch-size",
        "1",
        "--max-queue-size",
        "2",
    )
    try:
        x = np.zeros((1, 3, 64, 64), np.float32)
        body = infer_body(x)

        def send(_: int) -> requests.Response:
            return requests.post(s.infer_url("slow"), json=body, timeout=60)

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(send, range(48)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}
        assert codes.count(503) > 0
        assert codes.count(200) > 0
        assert all("queue full" in r.json()["error"] for r in responses if r.status_code == 503)
        assert s.metric("trtops_requests_total", outcome="rejected") == codes.count(503)
        assert s.metric("trtops_queue_depth") == 0
        assert requests.post(s.infer_url("slow"), json=body, timeout=60).status_code == 200
    finally:
        assert s.stop() == 0


def test_request_timeout_is_504(model_dir: Path, tmp_path: Path) -> None:
    s = start_server(
        tmp_path,
        "--model",
        str(model_dir / "slow.onnx"),
        "--model-name",
        "slow",
        "--max-batch-size",
        "1",
        "--request-timeout-ms",
        "1",
    )
    try:
        body = infer_body(np.zeros((8, 3, 64, 64), np.float32))
        response = requests.post(s.infer_url("slow"), json=body, timeout=60)
        assert response.status_code == 504
        assert "error" in response.json()
        assert requests.get(f"{s.url}/v2/health/ready", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0


async def test_instances_run_batches_at_once() -> None:
    """In process: each batch waits at a two-party barrier, so it only completes when two batches
    are on the backend at the same time (one instance would break the barrier)."""
    barrier = threading.Barrier(2, timeout=20)

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        barrier.wait()
        return {"y": inputs["x"] * 2}

    batcher = Batcher(
        run,
        max_batch_size=8,
        max_queue_delay_us=0,
        max_queue_size=8,
        batchable=True,
        instances=2,
    )
    batcher.start()
    try:
        # different trailing shapes never merge: two batches
        a, b = np.ones((1, 3), np.float32), np.ones((1, 4), np.float32)
        out_a, out_b = await asyncio.gather(
            batcher.submit({"x": a}, 30), batcher.submit({"x": b}, 30)
        )
    finally:
        await batcher.close()
    np.testing.assert_array_equal(out_a["y"], a * 2)
    np.testing.assert_array_equal(out_b["y"], b * 2)
    assert batcher.describe()["instances"] == 2


async def test_one_cpu_instance_runs_batches_on_the_event_loops_thread() -> None:
    """In process: with ``on_loop`` and one instance a batch runs on the thread of the event
    loop (no hop to a worker thread and back); with two instances, or without it, on a worker
    thread, so the loop keeps feeding the other instance."""
    for on_loop, instances, here in ((True, 1, True), (True, 2, False), (False, 1, False)):
        threads: list[threading.Thread] = []

        def run(inputs: dict[str, np.ndarray], seen: list[threading.Thread] = threads) -> dict:
            seen.append(threading.current_thread())
            return {"y": inputs["x"] + 1}

        batcher = Batcher(
            run,
            max_batch_size=4,
            max_queue_delay_us=0,
            max_queue_size=8,
            batchable=True,
            instances=instances,
            on_loop=on_loop,
        )
        batcher.start()
        try:
            x = np.ones((1, 3), np.float32)
            out = await batcher.submit({"x": x}, 30)
        finally:
            await batcher.close()
        np.testing.assert_array_equal(out["y"], x + 1)
        assert (threads == [threading.current_thread()]) is here, (on_loop, instances)


async def test_long_runs_leave_the_event_loop_for_a_worker_thread() -> None:
    """In process: a run longer than ``on_loop_max_run_s`` would hold the loop (and the probes
    on it) that long, so once the recent runs are that slow the next batch runs in a worker."""
    threads: list[threading.Thread] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.current_thread())
        time.sleep(0.05)
        return {"y": inputs["x"] + 1}

    batcher = Batcher(
        run,
        max_batch_size=4,
        max_queue_delay_us=0,
        max_queue_size=8,
        batchable=True,
        on_loop=True,
        on_loop_max_run_s=0.02,
    )
    batcher.start()
    try:
        for _ in range(2):
            await batcher.submit({"x": np.ones((1, 3), np.float32)}, 30)
    finally:
        await batcher.close()
    assert threads[0] is threading.current_thread()  # nothing known yet: on the loop
    assert threads[1] is not threading.current_thread()  # 50 ms runs: in a worker


async def test_free_instances_share_a_burst_instead_of_one_taking_it_all() -> None:
    """In process: four same-shape requests arrive at once and two instances are free. Each batch
    waits at a two-party barrier, so the burst only completes if it is split over both instances
    (one batch of four would wait alone at the barrier and time out)."""
    barrier = threading.Barrier(2, timeout=20)
    rows: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows.append(len(inputs["x"]))
        barrier.wait()
        return {"y": inputs["x"] * 2}

    batcher = Batcher(
        run, max_batch_size=8, max_queue_delay_us=0, max_queue_size=8, batchable=True, instances=2
    )
    batcher.start()
    xs = [np.full((1, 3), i, np.float32) for i in range(4)]
    try:
        outs = await asyncio.gather(*(batcher.submit({"x": x}, 30) for x in xs))
    finally:
        await batcher.close()
    assert sorted(rows) == [2, 2]
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)


async def test_a_full_batch_is_sent_ahead_while_every_instance_is_busy() -> None:
    """In process: while the only instance runs a lone request, two more fill a batch. That batch
    cannot grow, so it leaves the queue for the executor at once (queue depth 0) and runs the
    moment the instance is free; a batch that is not full stays queued and may still grow."""
    release = threading.Event()
    rows: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows.append(len(inputs["x"]))
        release.wait(20)
        return {"y": inputs["x"] * 2}

    batcher = Batcher(
        run, max_batch_size=2, max_queue_delay_us=0, max_queue_size=8, batchable=True, instances=1
    )
    batcher.start()
    xs = [np.full((1, 3), i, np.float32) for i in range(4)]

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(2000):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("condition not reached")

    try:
        first = asyncio.ensure_future(batcher.submit({"x": xs[0]}, 30))
        await until(lambda: rows == [1])  # the lone request is running
        lone = asyncio.ensure_future(batcher.submit({"x": xs[1]}, 30))
        await asyncio.sleep(0.05)
        assert batcher.depth == 1  # not full: it waits in the queue, where it can still grow
        rest = asyncio.ensure_future(batcher.submit({"x": xs[2]}, 30))
        await until(lambda: batcher.depth == 0)  # now full: sent ahead to the executor
        assert rows == [1]  # ... but not running before the instance is free
        release.set()
        outs = await asyncio.gather(first, lone, rest)
    finally:
        release.set()
        await batcher.close()
    assert rows == [1, 2]
    for x, out in zip(xs, outs, strict=False):
        np.testing.assert_array_equal(out["y"], x * 2)


def test_two_instances_serve_exact_results_and_say_so(model_dir: Path, tmp_path: Path) -> None:
    s = start_server(
        tmp_path,
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--max-batch-size",
        "4",
        "--instances",
        "2",
    )
    try:
        meta = requests.get(f"{s.url}/v2/models/conv", timeout=5).json()
        assert meta["parameters"]["instances"] == 2
        inputs = [conv_input(1 + i % 2, seed=200 + i) for i in range(16)]

        def send(x: np.ndarray) -> np.ndarray:
            response = requests.post(s.infer_url(), json=infer_body(x), timeout=30)
            assert response.status_code == 200, response.text
            return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(len(x), 10)

        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(send, inputs))
        for x, out in zip(inputs, outputs, strict=True):
            np.testing.assert_allclose(out, reference(model_dir, x), rtol=1e-5, atol=1e-6)
    finally:
        assert s.stop() == 0


def test_negative_instances_is_a_flag_error(model_dir: Path, tmp_path: Path) -> None:
    s = start_server(
        tmp_path,
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--instances",
        "-1",
        wait_ready=False,
    )
    assert s.process.wait(60) == 2
    assert "--instances and --intra-op-threads must be >= 0" in s.output()


@pytest.mark.parametrize(
    ("sizing", "way_out"),
    [
        (["--instances", "2"], "set --instances 1 or --wide-threads 0\n"),
        # --instances 1 alone would leave one front end: no wide session either
        (
            ["--front-ends", "1"],
            "set --instances 1 or --wide-threads 0 (and --front-ends 2 or more)",
        ),
    ],
)
def test_a_wide_session_beside_several_instances_is_a_flag_error(
    model_dir: Path, tmp_path: Path, sizing: list[str], way_out: str
) -> None:
    """Two lone batches on two instances would each take every core: refused at start, with
    a way out that leads to a wide session, instead of oversubscribing the pod."""
    s = start_server(
        tmp_path,
        *("--model", str(model_dir / "conv.onnx"), "--model-name", "conv"),
        *(*sizing, "--wide-threads", "2"),
        wait_ready=False,
    )
    assert s.process.wait(60) == 2
    assert "--wide-threads needs one instance per front end" in s.output()
    assert way_out in s.output()


@pytest.mark.parametrize(
    ("sizing", "why"),
    [
        (["--front-ends", "1", "--instances", "1"], "a wide session needs two or more front ends"),
        (
            ["--front-ends", "2", "--intra-op-threads", "2"],
            "no wider than the instances' 2 threads",
        ),
    ],
)
def test_a_wide_session_that_cannot_help_is_said_to_be_ignored(
    model_dir: Path, tmp_path: Path, sizing: list[str], why: str
) -> None:
    """One front end has no other to share the cores with, and a wide session no wider than
    the instances is a second copy of the weights for nothing: no wide session, and a forced
    --wide-threads says so in the log, once, instead of vanishing silently."""
    s = start_server(
        tmp_path,
        *("--model", str(model_dir / "conv.onnx"), "--model-name", "conv"),
        *(*sizing, "--wide-threads", "2"),
    )
    try:
        meta = requests.get(f"{s.url}/v2/models/conv", timeout=10).json()
        assert meta["parameters"]["wide_threads"] == 0
        assert s.output().count(f"--wide-threads 2 ignored: {why}") == 1
    finally:
        assert s.stop() == 0
