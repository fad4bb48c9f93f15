"""Several front ends on one pod's ports (``--front-ends``): real processes on loopback.

A supervisor starts the front ends; each one is a whole server. What a user sees: every front
end takes part of the traffic, the one metrics port counts each request once, SIGTERM drains
them all, and a front end that dies takes the pod down instead of leaving it half-serving.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.serve.conftest import conv_input, infer_body
from tests.support.worker import Server, start_server


def _front_ends(supervisor: int) -> list[int]:
    text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    return [int(pid) for pid in text.split()]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes (its parent reaps it)
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _all_listening(s: Server, count: int) -> None:
    """A front end listens once warm; the first one ready makes the pod ready."""
    deadline = time.monotonic() + 60
    while s.output().count("listening: http") < count:
        assert time.monotonic() < deadline, s.output()
        time.sleep(0.05)


@pytest.fixture
def two_front_ends(model_dir: Path, tmp_path: Path) -> Server:
    server = start_server(
        tmp_path,
        "--model",
        str(model_dir / "slow.onnx"),
        "--model-name",
        "slow",
        "--front-ends",
        "2",
        "--max-batch-size",
        "4",
        "--drain-seconds",
        "3",
    )
    _all_listening(server, 2)
    return server


def test_every_front_end_serves_and_metrics_count_each_request_once(
    two_front_ends: Server,
) -> None:
    s = two_front_ends
    try:
        pids = _front_ends(s.process.pid)
        assert len(pids) == 2
        before = {pid: _cpu_seconds(pid) for pid in pids}
        body = infer_body(np.zeros((1, 3, 64, 64), np.float32))
        sent = 40
        for _ in range(sent):  # a new connection each: the kernel spreads them over the ports
            r = requests.post(s.infer_url("slow"), json=body, timeout=30)
            assert r.status_code == 200, r.text
        used = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
        # each front end computed a share (one request here is ~10 ms of CPU); an idle one ~0
        assert all(seconds >= 0.05 for seconds in used.values()), used
        assert s.metric("trtops_requests_total", outcome="success") == sent
        assert s.metric("trtops_request_duration_seconds_count") == sent
        assert s.metric("trtops_batch_size_sum") == sent  # rows computed, over both
        assert s.metric("trtops_inflight_requests") == 0
        # the inference CPU each front end counts, summed once: part of what they used
        assert 0.05 <= s.metric("trtops_compute_cpu_seconds_total") <= sum(used.values())
        bad = requests.post(s.infer_url("slow"), json={"inputs": "no"}, timeout=30)
        assert bad.status_code == 400
        assert s.metric("trtops_requests_total", outcome="client_error") == 1
    finally:
        assert s.stop() == 0


def test_sigterm_drains_every_front_end_and_exits_0(two_front_ends: Server) -> None:
    s = two_front_ends
    pids = _front_ends(s.process.pid)
    body = infer_body(np.zeros((2, 3, 64, 64), np.float32))

    def send(_: int) -> int:
        # new connections, so both front ends hold requests when the signal comes
        return requests.post(s.infer_url("slow"), json=body, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:  # all 16 in flight at once: none starts after the stop
        burst = [pool.submit(send, i) for i in range(16)]
        deadline = time.monotonic() + 20
        while s.metric("trtops_inflight_requests") < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        s.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # every front end turned unready at once: no answer says ready any more
        assert all(
            requests.get(f"{s.url}/v2/health/ready", timeout=5).status_code == 400 for _ in range(8)
        )
        codes = [f.result() for f in burst]
    assert codes == [200] * len(codes)
    assert s.process.wait(30) == 0
    assert not any(_alive(pid) for pid in pids)
    assert "front end pid" not in s.output()  # none reported as failed


def _conv(model_dir: Path, tmp_path: Path, front_ends: int) -> Server:
    model = str(model_dir / "conv.onnx")
    args = ("--model", model, "--model-name", "conv", "--front-ends", str(front_ends))
    return start_server(tmp_path, *args)


def test_a_front_end_that_dies_takes_the_pod_down(model_dir: Path, tmp_path: Path) -> None:
    s = _conv(model_dir, tmp_path, 2)
    _all_listening(s, 2)
    pids = _front_ends(s.process.pid)
    os.kill(pids[0], signal.SIGKILL)
    assert s.process.wait(30) == 1  # the pod restarts whole rather than serving on half
    assert not any(_alive(pid) for pid in pids)
    assert f"front end pid {pids[0]} exited with -9" in s.output()


def test_a_model_that_is_not_there_is_said_so_with_several_front_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator shows why a pod could not start from its termination message: with
    several front ends (the default on two or more cores) as with one, not a traceback."""
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TRTOPS_TERMINATION_LOG", str(termination))
    s = start_server(
        tmp_path,
        *("--model", str(tmp_path / "missing.onnx"), "--model-name", "m", "--front-ends", "2"),
        wait_ready=False,
    )
    assert s.process.wait(60) == 1
    assert "Traceback" not in s.output()
    assert "cannot load" in s.output()
    assert "BackendLoadFailed" in termination.read_text()


def test_front_ends_stop_when_their_supervisor_is_killed(model_dir: Path, tmp_path: Path) -> None:
    """A supervisor killed outright (SIGKILL: the OOM killer, say) leaves no front ends
    serving on the pod's ports: they drain and exit."""
    s = _conv(model_dir, tmp_path, 2)
    _all_listening(s, 2)
    pids = _front_ends(s.process.pid)
    s.process.kill()
    s.process.wait(30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in pids if _alive(pid)]
    for pid in orphans:  # not left behind by a failing test
        os.kill(pid, signal.SIGKILL)
    assert orphans == []


def test_one_front_end_needs_no_supervisor(model_dir: Path, tmp_path: Path) -> None:
    s = _conv(model_dir, tmp_path, 1)
    try:
        assert _front_ends(s.process.pid) == []
        r = requests.post(s.infer_url(), json=infer_body(conv_input(1)), timeout=30)
        assert r.status_code == 200
        assert s.metric("trtops_requests_total", outcome="success") == 1
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("cores", [1, 2])
def test_the_cores_the_pod_may_use_size_the_defaults(
    model_dir: Path, tmp_path: Path, cores: int
) -> None:
    """With no sizing flags a server pinned to ``cores`` cores (what the static CPU manager or
    ``taskset`` does) runs one front end of one one-thread instance per core: one process
    alone on one core, a supervisor and two front ends on two."""
    everything = os.sched_getaffinity(0)
    if len(everything) < cores:
        pytest.skip(f"needs {cores} cores")
    os.sched_setaffinity(0, sorted(everything)[:cores])  # the server inherits it
    try:
        s = start_server(tmp_path, "--model", str(model_dir / "conv.onnx"), "--model-name", "conv")
    finally:
        os.sched_setaffinity(0, everything)
    try:
        _all_listening(s, cores)
        assert len(_front_ends(s.process.pid)) == (cores if cores > 1 else 0)
        assert s.output().count("ONNX Runtime: 1 instances of 1 threads") == cores
        if cores > 1:  # what was chosen, and why, once for the pod
            assert (
                s.output().count(
                    "wide session: 2 threads once the other front ends are idle (automatic: a"
                    " second copy of the weights (0 MB) in 2 front ends fits a quarter of the pod's"
                    " memory ("
                )
                == 1
            )
        config = requests.get(f"{s.url}/v2/models/conv/config", timeout=10).json()
        assert config["instance_group"][0]["count"] == 1
        for _ in range(4):  # new connections: on two cores both front ends get some
            r = requests.post(s.infer_url(), json=infer_body(conv_input(1)), timeout=30)
            assert r.status_code == 200, r.text
        assert s.metric("trtops_requests_total", outcome="success") == 4
    finally:
        assert s.stop() == 0


def test_a_lone_request_runs_on_the_wide_session_and_answers_the_same(
    model_dir: Path, tmp_path: Path
) -> None:
    """With no other front end computing, a batch runs on the wide session (all the pod's
    threads): the same answer as the one-thread session's, counted in trtops_wide_runs_total
    and shown in the model metadata; --wide-threads 0 turns it off."""
    common = ["--model", str(model_dir / "conv.onnx"), "--model-name", "conv", "--front-ends", "2"]
    wide = start_server(tmp_path, *common, "--wide-threads", "2")
    narrow = start_server(tmp_path, *common, "--wide-threads", "0")
    try:
        _all_listening(wide, 2)
        assert "wide session: 2 threads once the other front ends are idle (--wide-threads 2)" in (
            wide.output()
        )
        # the warm-up runs (alone, so wide) are no batches a client sent
        assert wide.metric("trtops_wide_runs_total") == 0
        x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
        answers = []
        for s in (wide, narrow):
            # One at a time over one connection (one front end): it is alone. Over a new
            # connection each, the other front end may have answered the last one under the
            # board's quiet time ago, and the batch rightly stays on one thread.
            session = requests.Session()
            for _ in range(5):
                r = session.post(s.infer_url("conv"), json=infer_body(x), timeout=30)
                assert r.status_code == 200, r.text
            answers.append(np.asarray(r.json()["outputs"][0]["data"]))
            meta = requests.get(f"{s.url}/v2/models/conv", timeout=10).json()
            assert meta["parameters"]["wide_threads"] == (2 if s is wide else 0)
        np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-6)
        assert wide.metric("trtops_wide_runs_total") == 5
        assert narrow.metric("trtops_wide_runs_total") == 0
    finally:
        assert wide.stop() == 0
        assert narrow.stop() == 0
