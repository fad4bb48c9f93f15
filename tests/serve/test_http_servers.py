"""The opt-in granian front ends (``--http-server granian-asgi|granian-rsgi``): the same handler
as uvicorn's, so the same answers, limits, metrics and drain. Real processes on loopback, two
front ends sharing the port (granian binds with ``SO_REUSEPORT``)."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.serve.conftest import conv_input, infer_body
from tests.support.worker import start_server

pytest.importorskip("granian")  # the dev extra installs it


@pytest.mark.parametrize("http_server", ["granian-asgi", "granian-rsgi"])
def test_granian_answers_refuses_counts_once_and_drains_like_uvicorn(
    model_dir: Path, tmp_path: Path, http_server: str
) -> None:
    common = ["--model", str(model_dir / "conv.onnx"), "--model-name", "conv"]
    common += ["--max-body-bytes", "1000000"]
    uvicorn = start_server(tmp_path, *common, "--front-ends", "1")
    granian = start_server(
        tmp_path,
        *common,
        "--front-ends",
        "2",
        "--http-server",
        http_server,
        "--drain-seconds",
        "1",
    )
    try:
        x = conv_input(3)
        want = requests.post(uvicorn.infer_url(), json=infer_body(x), timeout=30).json()
        got = requests.post(granian.infer_url(), json=infer_body(x), timeout=30)
        assert got.status_code == 200, got.text
        assert got.json()["outputs"] == want["outputs"]

        too_big = requests.post(granian.infer_url(), data=b"x" * 2_000_000, timeout=30)
        assert too_big.status_code == 413
        assert "limit" in too_big.json()["error"]
        bad = requests.post(granian.infer_url(), data=b"{not json", timeout=30)
        assert bad.status_code == 400
        assert "JSON" in bad.json()["error"]

        def one(_: int) -> int:
            body = infer_body(conv_input(1))
            return requests.post(granian.infer_url(), json=body, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(40))) == [200] * 40
            # both front ends' counts, each request once (the 413 and 400 are failures)
            assert granian.metric("trtops_requests_total", outcome="success") == 1 + 40
            # SIGTERM while requests are in flight: they all finish, the pod exits 0
            late = [pool.submit(one, i) for i in range(16)]
            granian.process.send_signal(signal.SIGTERM)
            assert [f.result() for f in late] == [200] * 16
        assert granian.process.wait(60) == 0
    finally:
        uvicorn.stop()
        granian.stop()
    assert np.asarray(want["outputs"][0]["data"]).size == 3 * 10
