"""The front ends' busy board (serve/busy.py): a front end runs wide only once every other one
has been idle for the quiet time; boards on one file stand for the front ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from trtops_worker.serve.busy import QUIET_S, BusyBoard

MS = 1_000_000  # ns
START = 10_000 * MS  # a moment well after the clock's start
QUIET = int(QUIET_S * 1e9)


def test_a_front_end_is_alone_only_while_no_other_one_has_requests(tmp_path: Path) -> None:
    first, second, third = (BusyBoard(tmp_path / "busy", i, 3) for i in range(3))
    assert first.alone()  # a new board: nobody busy, ever
    first.mark(True)
    assert first.alone()  # only itself
    assert not second.alone()
    second.mark(True)
    assert not first.alone()
    first.mark(False, START)
    assert not third.alone(START + QUIET)  # the second one still has requests
    second.mark(False, START)
    assert third.alone(START + QUIET)
    for board in (first, second, third):
        board.close()


def test_a_front_end_idle_for_less_than_the_quiet_time_keeps_the_others_narrow(
    tmp_path: Path,
) -> None:
    """Under load a front end is idle between batches for a round trip: another front end must
    not take every core in that gap, only once it has lasted the quiet time."""
    loaded, other = BusyBoard(tmp_path / "busy", 0, 2), BusyBoard(tmp_path / "busy", 1, 2)
    loaded.mark(True)
    loaded.mark(False, START)  # its batch answered; the next requests are on their way
    assert not other.alone(START + 1 * MS)
    assert not other.alone(START + QUIET - 1)
    assert other.alone(START + QUIET)
    loaded.mark(True)  # they arrived
    assert not other.alone(START + 10 * QUIET)
    loaded.close()
    other.close()


def test_a_pod_of_one_front_end_is_always_alone(tmp_path: Path) -> None:
    board = BusyBoard(tmp_path / "busy", 0, 1)
    board.mark(True)
    assert board.alone(START)
    board.close()


def test_a_board_refuses_an_index_outside_its_front_ends(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="front end 2 is not one of 2"):
        BusyBoard(tmp_path / "busy", 2, 2)


def test_the_warm_up_runs_the_one_thread_session_too(model_dir: Path, tmp_path: Path) -> None:
    """A warm-up batch is alone on the board (no front end has requests yet), so it ran only
    the wide session: the one-thread session that every batch runs on under load stayed cold
    (its first runs take 2-4x). Warm-ups are no batches a client sent: no wide runs count."""
    from trtops_worker.serve.backend import LoadedBackend
    from trtops_worker.serve.backend_onnxruntime import OnnxRuntimeBackend
    from trtops_worker.serve.dataplane import DataPlane, ServeConfig
    from trtops_worker.serve.metrics import Labels, ServeMetrics

    board = BusyBoard(tmp_path / "busy", 0, 2)
    backend = OnnxRuntimeBackend(
        model_dir / "conv.onnx", intra_op_threads=1, wide_threads=2, board=board
    )
    sessions = {id(backend._sessions[0]): "one-thread", id(backend._wide): "wide"}
    ran: list[str] = []
    run = backend._run
    backend._run = lambda session, inputs: (
        ran.append(sessions[id(session)]),
        run(session, inputs),
    )[1]  # type: ignore[method-assign]
    config = ServeConfig(
        model_name="conv",
        revision="",
        precision="",
        requested_backend="onnxruntime",
        fallback_model=None,
        cpu_fallback=False,
        max_batch_size=1,
        max_queue_delay_us=0,
        intra_op_threads=1,
    )
    metrics = ServeMetrics(Labels("conv", "", "", "onnxruntime"), registry=CollectorRegistry())
    plane = DataPlane(config, LoadedBackend(backend), metrics)
    plane.warmup()
    assert plane.warmup_status == "done"
    assert set(ran) == {"one-thread", "wide"}
    assert metrics.wide_runs.labels("conv", "", "", "onnxruntime")._value.get() == 0
    board.close()
