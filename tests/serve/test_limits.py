"""One client cannot take a serving pod down: body deadline, body limit, batch limit, probes.

Measured before these limits (issue 20): ~1,000 stalled uploads made ``/v2/health/live``
answer 503 (the connection cap was shared with the kubelet's probes), and one 64 MiB JSON
request took a pod from 95 MiB to 1.38 GB and ran as one batch despite max batch 8.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.worker import Server, start_server

from .conftest import conv_input, infer_body


def _upload_head(server: Server, length: int) -> bytes:
    return (
        f"POST /v2/models/conv/infer HTTP/1.1\r\nHost: 127.0.0.1:{server.http_port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def defaults(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The conv model with batching and no --max-body-bytes: the limit sized from the model."""
    server = start_server(
        tmp_path_factory.mktemp("limits"),
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--max-batch-size",
        "8",
        "--body-timeout-seconds",
        "3",
    )
    yield server
    assert server.stop() == 0


def test_stalled_uploads_do_not_make_the_probes_fail(defaults: Server) -> None:
    """1,100 clients send headers and a sliver of their body, then stall: more than the request
    cap (1,024). The probes are still answered, the stalled uploads get 408 at the deadline,
    and the server serves again afterwards."""
    stalled: list[socket.socket] = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", defaults.http_port), timeout=10)
            sock.sendall(_upload_head(defaults, 100_000) + b'{"inputs": [')
            stalled.append(sock)
        time.sleep(0.5)  # every upload is in
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert requests.get(defaults.url + path, timeout=5).status_code == 200
        # past the deadline each stalled upload is answered (408; 503 for those over the cap)
        statuses = [_status(sock) for sock in stalled]
        assert set(statuses) <= {408, 503}, set(statuses)
        assert statuses.count(408) >= 1000
    finally:
        for sock in stalled:
            sock.close()
    ok = requests.post(defaults.infer_url(), json=infer_body(conv_input(1)), timeout=10)
    assert ok.status_code == 200, ok.text


def test_a_64_mib_json_body_is_refused_by_the_default_limit(defaults: Server) -> None:
    """The default limit is sized from the model: a full batch of its inputs as JSON text."""
    with socket.create_connection(("127.0.0.1", defaults.http_port), timeout=10) as sock:
        sock.sendall(_upload_head(defaults, 64 << 20) + b'{"inputs": [' + b"0.0, " * 100_000)
        assert _status(sock) == 413
    # chunked: no declared length, refused once the received bytes pass the limit
    with socket.create_connection(("127.0.0.1", defaults.http_port), timeout=10) as sock:
        head = (
            b"POST /v2/models/conv/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head)
        chunk = b"0.0, " * 200_000  # 1 MB
        for _ in range(8):
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the server answered and closed: enough
                break
        assert _status(sock) == 413
    limit = requests.post(defaults.infer_url(), data=b"x" * (5 << 20), timeout=10)
    assert "limit" in limit.json()["error"]


def test_a_request_bigger_than_a_batch_is_refused(defaults: Server) -> None:
    response = requests.post(defaults.infer_url(), json=infer_body(conv_input(9)), timeout=10)
    assert response.status_code == 400
    assert "batch-size must be <= 8" in response.json()["error"]
    fits = requests.post(defaults.infer_url(), json=infer_body(conv_input(8)), timeout=10)
    assert fits.status_code == 200
