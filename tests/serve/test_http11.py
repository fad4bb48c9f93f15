"""The HTTP/1.1 listener (serve/http11.py, the default ``--http-server httptools``) as clients
see it on the wire: pipelining, keep-alive and its idle limit, ``Connection: close``, HTTP/1.0,
``Expect: 100-continue``, HEAD, and refusals that end one connection and no other. Raw sockets
against the session's real server, since HTTP client libraries hide exactly these."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import numpy as np
import requests

from tests.support.worker import Server, start_server

from .conftest import conv_input


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10)


class _Reader:
    """Reads HTTP/1.1 responses (Content-Length framed) off one socket, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-response: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
        }
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split(" ")[1]), headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (nothing more comes)."""
        try:
            return not self._fill()
        except ConnectionResetError:
            return True


def _infer_request(x: np.ndarray, extra_headers: str = "", version: str = "1.1") -> bytes:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    return (
        f"POST /v2/models/conv/infer HTTP/{version}\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


def _want(server: Server, x: np.ndarray) -> list[float]:
    r = requests.post(
        server.infer_url(), data=_infer_request(x).split(b"\r\n\r\n", 1)[1], timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()["outputs"][0]["data"]  # type: ignore[no-any-return]


def test_pipelined_requests_are_answered_in_order_on_one_connection(server: Server) -> None:
    a, b = conv_input(1, seed=1), conv_input(2, seed=2)
    with _connect(server) as sock:
        sock.sendall(
            _infer_request(a)
            + b"GET /v2/models/conv HTTP/1.1\r\nHost: x\r\n\r\n"
            + _infer_request(b)
            + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reader = _Reader(sock)
        answers = [reader.response() for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0][2])["outputs"][0]["data"] == _want(server, a)
    assert json.loads(answers[1][2])["name"] == "conv"
    assert json.loads(answers[2][2])["outputs"][0]["shape"] == [2, 10]
    assert json.loads(answers[2][2])["outputs"][0]["data"] == _want(server, b)
    assert json.loads(answers[3][2]) == {"live": True}


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(server: Server) -> None:
    for request in (
        _infer_request(conv_input(1), "Connection: close\r\n"),
        _infer_request(conv_input(1), version="1.0"),
    ):
        with _connect(server) as sock:
            sock.sendall(request)
            reader = _Reader(sock)
            status, headers, _ = reader.response()
            assert status == 200
            assert headers["connection"] == "close"
            assert reader.closed()


def test_expect_100_continue_gets_a_go_ahead_before_the_body(server: Server) -> None:
    request = _infer_request(conv_input(1), "Expect: 100-continue\r\n")
    head, body = request.split(b"\r\n\r\n", 1)
    with _connect(server) as sock:
        sock.sendall(head + b"\r\n\r\n")
        reader = _Reader(sock)
        status, _, _ = reader.response()
        assert status == 100
        sock.sendall(body)
        status, _, answer = reader.response()
    assert status == 200
    assert json.loads(answer)["outputs"][0]["shape"] == [1, 10]


def test_head_answers_headers_only_and_the_connection_goes_on(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = _Reader(sock)
        status, headers, _ = reader.response(head_only=True)
        assert status == 200
        assert int(headers["content-length"]) == len(b'{"ready":true}')
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = reader.response()
    assert (status, json.loads(body)) == (200, {"live": True})


def test_malformed_and_oversized_requests_end_their_connection_only(server: Server) -> None:
    with _connect(server) as bystander:
        bystander.sendall(_infer_request(conv_input(1))[:100])  # half a request, waiting
        cases = [
            (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request"),
            (
                b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Content-Length: 7\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: "
                + b"a" * (80 << 10)
                + b"\r\n\r\n",
                431,
                "headers are over",
            ),
            # an upgrade is not taken: the request is answered as HTTP/1.1, then the end
            (
                b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
                b"Connection: Upgrade\r\n\r\n",
                200,
                "",
            ),
        ]
        for request, want_status, want_message in cases:
            with _connect(server) as sock:
                sock.sendall(request)
                reader = _Reader(sock)
                status, headers, body = reader.response()
                assert status == want_status, body
                assert want_message in json.loads(body).get("error", "")
                assert headers["connection"] == "close"
                assert reader.closed()
        bystander.sendall(_infer_request(conv_input(1))[100:])
        status, _, body = _Reader(bystander).response()
    assert status == 200
    assert json.loads(body)["outputs"][0]["shape"] == [1, 10]


def test_an_idle_keep_alive_connection_is_closed_a_busy_one_is_not(server: Server) -> None:
    """Idle past the keep-alive limit (5 s): closed, so idle clients cannot hold every file
    descriptor. A connection that keeps sending stays open as long as it likes."""
    with _connect(server) as idle, _connect(server) as busy:
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        idle_reader, busy_reader = _Reader(idle), _Reader(busy)
        assert idle_reader.response()[0] == 200
        started = time.monotonic()
        while time.monotonic() - started < 8:
            busy.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert busy_reader.response()[0] == 200
            time.sleep(0.5)
        assert idle_reader.closed()
        busy.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert busy_reader.response()[0] == 200


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(server: Server) -> None:
    """``shutdown(SHUT_WR)`` after sending (netcat, some health checkers) is no disconnect: the
    answers owed still come, in order, then the connection closes. None came before."""
    x = conv_input(1)
    with _connect(server) as sock:
        sock.sendall(_infer_request(x) * 3)
        sock.shutdown(socket.SHUT_WR)
        reader = _Reader(sock)
        for _ in range(3):
            status, _, answer = reader.response()
            assert status == 200
            assert json.loads(answer)["outputs"][0]["data"] == _want(server, x)
        assert reader.closed()


def test_a_malformed_request_pipelined_after_a_good_one_is_refused_after_its_answer(
    server: Server,
) -> None:
    """The good request's answer, then the refusal (400 or 431 with its error body), then the
    end of the connection. The refusal was dropped: the client saw a close with no reason."""
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    cases = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request"),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "Length"),
        (b"GET /" + b"a" * (80 << 10) + b" HTTP/1.1\r\n\r\n", 431, "headers are over"),
    ]
    for bad, want_status, want_message in cases:
        with _connect(server) as sock:
            sock.sendall(live + live + bad + live)
            reader = _Reader(sock)
            for _ in range(2):
                assert reader.response()[0] == 200
            status, headers, body = reader.response()
            assert status == want_status, body
            assert want_message in json.loads(body)["error"]
            assert headers["connection"] == "close"
            assert reader.closed()


def test_sigterm_answers_every_request_already_received_on_a_connection(
    model_dir: Path, tmp_path: Path
) -> None:
    """Ten requests pipelined on one connection, SIGTERM while the first runs: all ten are
    answered, then the connection closes and the server exits 0. Only the one in progress was
    answered; the others received were dropped."""
    s = start_server(
        tmp_path,
        "--model",
        str(model_dir / "slow.onnx"),
        "--model-name",
        "slow",
        "--front-ends",
        "1",
    )
    request = _infer_request(np.zeros((1, 3, 64, 64), np.float32))  # 60 KB, ~20 ms each
    request = request.replace(b"/models/conv/", b"/models/slow/")
    with _connect(s) as sock:
        sock.sendall(request * 10)
        time.sleep(0.05)  # all received (one at a time: a connection's requests run in turn)
        s.process.send_signal(signal.SIGTERM)
        reader = _Reader(sock)
        answers = [reader.response() for _ in range(10)]
        assert reader.closed()
    assert [status for status, _, _ in answers] == [200] * 10
    assert s.process.wait(60) == 0
