"""gRPC on our own HTTP/2 server (``TRTOPS_GRPC_SERVER=h2``, the default): what a client sees is
what grpc.aio gave it, with grpc's and Triton's own clients, past the cases test_grpc.py covers:
windows, compression, limits, cancels, deadlines, shutdown."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trtops_worker.bench.clients import grpc_infer_request
from trtops_worker.serve.proto import grpc_predict_v2_pb2 as pb
from trtops_worker.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

from tests.support.worker import Server, start_server

from .conftest import conv_input
from .test_grpc import bad_request
from .test_rest import reference

tritonclient = pytest.importorskip("tritonclient.grpc")

WIDE = 300_000  # floats per row of the wide model: a 1.2 MB answer, far past any first window


def start_h2(tmp: Path, *args: str) -> Server:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRTOPS_GRPC_SERVER", "h2")
        return start_server(tmp, "--front-ends", "1", *args)


@pytest.fixture(scope="module")
def h2(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_h2(
        tmp_path_factory.mktemp("h2"),
        *("--model", str(model_dir / "conv.onnx"), "--model-name", "conv"),
        *("--max-batch-size", "8", "--max-queue-delay-us", "20000"),
        *("--max-body-bytes", "1000000"),
    )
    yield s
    assert s.stop() == 0


def test_tritonclient_health_metadata_and_infer(h2: Server, model_dir: Path) -> None:
    client = tritonclient.InferenceServerClient(h2.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("conv")
    assert client.get_model_metadata("conv").platform == "onnxruntime_onnx"
    x = conv_input(2, seed=3)
    tensor = tritonclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("conv", [tensor], request_id="h2-1")
    assert result.get_response().id == "h2-1"
    np.testing.assert_array_equal(result.as_numpy("logits"), reference(model_dir, x))
    client.close()


def test_trailing_metadata_and_unknown_model(h2: Server) -> None:
    with grpc.insecure_channel(h2.grpc) as channel:
        client = pb_grpc.GRPCInferenceServiceStub(channel)
        _, call = client.ModelMetadata.with_call(pb.ModelMetadataRequest(name="conv"))
        assert dict(call.trailing_metadata())["trtops-fallback"] == "false"
        with pytest.raises(grpc.RpcError) as info:
            client.ModelMetadata(pb.ModelMetadataRequest(name="other"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_requests_past_the_first_window_and_compressed(
    h2: Server, model_dir: Path, compression: grpc.Compression | None
) -> None:
    """8 rows: a 98 KB message, past HTTP/2's 64 KiB first window and 16 KiB frames."""
    x = conv_input(8, seed=5)
    with grpc.insecure_channel(h2.grpc) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            grpc_infer_request("conv", {"input": x}), compression=compression
        )
    out = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(8, 10)
    np.testing.assert_array_equal(out, reference(model_dir, x))


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (bad_request(name="image"), grpc.StatusCode.INVALID_ARGUMENT),
        (bad_request(raw=b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ModelInferRequest(model_name="other"), grpc.StatusCode.NOT_FOUND),
        # over --max-body-bytes: refused while it arrives, as grpc.aio refuses it
        (
            bad_request(shape=[100, 3, 32, 32], raw=b"\0" * 1_228_800),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ],
)
def test_refusals(h2: Server, request_: pb.ModelInferRequest, code: grpc.StatusCode) -> None:
    with grpc.insecure_channel(h2.grpc) as channel:
        client = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            client.ModelInfer(request_)
        assert info.value.code() == code
        # the connection still serves
        assert client.ServerLive(pb.ServerLiveRequest()).live


def test_an_unknown_method_is_unimplemented(h2: Server) -> None:
    with grpc.insecure_channel(h2.grpc) as channel:
        method = channel.unary_unary("/inference.GRPCInferenceService/Nope")
        with pytest.raises(grpc.RpcError) as info:
            method(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_answer_past_the_clients_window(tmp_path: Path) -> None:
    """A 1.2 MB answer leaves as the client's WINDOW_UPDATEs allow, whole and in order."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "wide.onnx"))
    s = start_h2(tmp_path, "--model", str(tmp_path / "wide.onnx"), "--model-name", "wide")
    try:
        x = np.arange(WIDE, dtype=np.float32).reshape(1, WIDE)
        with grpc.insecure_channel(s.grpc) as channel:
            client = pb_grpc.GRPCInferenceServiceStub(channel)
            replies = list(
                ThreadPoolExecutor(4).map(
                    lambda _: client.ModelInfer(grpc_infer_request("wide", {"x": x})), range(4)
                )
            )
        for reply in replies:
            np.testing.assert_array_equal(
                np.frombuffer(reply.raw_output_contents[0], np.float32), x[0]
            )
    finally:
        assert s.stop() == 0


def test_sigterm_finishes_every_call_in_flight(model_dir: Path, tmp_path: Path) -> None:
    s = start_h2(
        tmp_path,
        *("--model", str(model_dir / "slow.onnx"), "--model-name", "slow"),
        *("--max-batch-size", "4", "--max-queue-size", "64", "--drain-seconds", "1"),
    )
    request = grpc_infer_request("slow", {"input": np.zeros((1, 3, 64, 64), np.float32)})
    with grpc.insecure_channel(s.grpc) as channel:
        client = pb_grpc.GRPCInferenceServiceStub(channel)
        with ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(client.ModelInfer, request, timeout=60) for _ in range(16)]
            deadline = time.monotonic() + 10
            while s.metric("trtops_inflight_requests") < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            s.process.send_signal(signal.SIGTERM)
            replies = [c.result() for c in calls]
    assert [r.model_name for r in replies] == ["slow"] * 16
    assert s.process.wait(30) == 0


def test_cancelled_and_timed_out_calls_leave_the_server_serving(
    model_dir: Path, tmp_path: Path
) -> None:
    """Calls the client gives up on (cancel: RST_STREAM; deadline: grpc-timeout) end on both
    sides; the same connection keeps serving and nothing stays in flight."""
    import asyncio

    s = start_h2(tmp_path, "--model", str(model_dir / "slow.onnx"), "--model-name", "slow")
    request = grpc_infer_request("slow", {"input": np.zeros((4, 3, 64, 64), np.float32)})

    async def run() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(s.grpc) as channel:
            client = pb_grpc.GRPCInferenceServiceStub(channel)
            cancelled = [client.ModelInfer(request) for _ in range(4)]
            await asyncio.sleep(0.05)
            for call in cancelled:
                call.cancel()
            codes = [await call.code() for call in cancelled]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ModelInfer(request, timeout=0.001)
            codes.append(info.value.code())
            reply = await client.ModelInfer(request, timeout=60)
            assert reply.model_name == "slow"
            return codes

    try:
        codes = asyncio.run(run())
        assert codes == [grpc.StatusCode.CANCELLED] * 4 + [grpc.StatusCode.DEADLINE_EXCEEDED]
        deadline = time.monotonic() + 10
        while s.metric("trtops_inflight_requests") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.metric("trtops_inflight_requests") == 0
    finally:
        assert s.stop() == 0


def test_a_client_that_does_not_speak_http2_is_closed_alone(h2: Server) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        while sock.recv(4096):  # a GOAWAY, then the end of the stream
            pass
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def test_malformed_frames_end_only_their_connection(h2: Server) -> None:
    """Frames a broken or hostile client might send after a valid preface (padding past the
    payload, a CONTINUATION out of place, even or zero stream ids, short payloads, a garbage
    header block, random bytes): each connection is closed or ignored alone, and the front end
    keeps serving without an error logged."""
    import random
    import socket

    rng = random.Random(7)
    cases = [
        _raw_frame(1, 0x8 | 0x4, 1),  # PADDED HEADERS without the pad length
        _raw_frame(1, 0x8 | 0x4, 1, b"\xff\x82"),  # padding longer than the frame
        _raw_frame(1, 0x20 | 0x4, 1, b"\x00"),  # PRIORITY fields cut short
        _raw_frame(9, 0x4, 1, b"\x82"),  # CONTINUATION without HEADERS
        _raw_frame(1, 0x4, 2, b"\x82"),  # a client stream with an even id
        _raw_frame(1, 0x4, 1, b"\xff\xff\xff\xff"),  # a header block HPACK cannot decode
        _raw_frame(8, 0, 0, b"\x01"),  # WINDOW_UPDATE cut short
        _raw_frame(4, 0, 0, b"\x00\x04\xff\xff\xff\xff"),  # INITIAL_WINDOW_SIZE past 2^31-1
        _raw_frame(0, 0x8 | 0x1, 1),  # PADDED DATA, empty, on a stream never opened
        _raw_frame(1, 0x4, 1, b"\x82") + _raw_frame(0, 0x8 | 0x1, 1),  # the same on an open stream
    ]
    for _ in range(20):
        payload = rng.randbytes(rng.randint(0, 40))
        cases.append(
            _raw_frame(rng.randint(0, 10), rng.randint(0, 255), rng.randint(0, 9), payload)
        )
    for frames in cases:
        with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            while sock.recv(4096):
                pass
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live
    assert "Traceback" not in h2.output()


def test_streams_past_the_advertised_limit_are_refused(h2: Server) -> None:
    """A client that opens more calls than SETTINGS_MAX_CONCURRENT_STREAMS (1024) without
    sending them gets REFUSED_STREAM for the extra one; the front end keeps serving."""
    import socket
    import struct

    import hpack

    encoder = hpack.Encoder()
    opened = b"".join(
        _raw_frame(1, 0x4, 1 + 2 * i, _call_headers(h2, "ServerLive", encoder)) for i in range(1025)
    )
    with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _raw_frame(4, 0, 0) + opened)
        refused = _raw_frame(3, 0, 1 + 2 * 1024, struct.pack(">I", 0x7))
        received = b""
        while refused not in received:
            chunk = sock.recv(65536)
            assert chunk, "closed before the refusal"
            received += chunk
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def test_an_unknown_streaming_method_is_unimplemented_before_the_client_half_closes(
    h2: Server,
) -> None:
    """Triton's ModelStreamInfer is not in the service: the answer comes on the headers, as
    grpc.aio gives it, not after a half-close a streaming client never sends."""
    import threading

    never = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b""
        never.wait(30)

    with grpc.insecure_channel(h2.grpc) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(requests(), timeout=10))
        never.set()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _raw_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    import struct

    head = struct.pack(">I", len(payload))[1:] + bytes((kind, flags))
    return head + struct.pack(">I", stream) + payload


def _call_headers(h2: Server, method: str = "ServerLive", encoder: Any = None) -> bytes:
    """A unary call's header block for ``method`` of the inference service, HPACK-encoded by
    ``encoder`` (one connection's, so later blocks refer to its table; default: a new one)."""
    import hpack

    return (encoder or hpack.Encoder()).encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"/inference.GRPCInferenceService/{method}"),
            (":authority", h2.grpc),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ]
    )


def _until_closed(sock: object, sent: bytes) -> bytes:
    """Everything the server sends until it closes, or resets a connection it closed while
    the client was still sending (a socket timeout: it never closed)."""
    import socket

    assert isinstance(sock, socket.socket)
    received = b""
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + sent)
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return received


@pytest.mark.parametrize("max_frame", [0, 16383, 1 << 24])
def test_a_max_frame_size_setting_out_of_range_ends_only_its_connection(
    h2: Server, max_frame: int
) -> None:
    """SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1 is a PROTOCOL_ERROR (RFC 9113 6.5.2). With
    0 accepted, the next answer was cut into empty DATA frames forever: the front end spun."""
    import socket
    import struct

    settings = _raw_frame(4, 0, 0, struct.pack(">HI", 0x5, max_frame))
    call = _raw_frame(1, 0x4, 1, _call_headers(h2)) + _raw_frame(0, 0x1, 1, b"\0" * 5)
    with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
        received = _until_closed(sock, settings + call)
    assert _raw_frame(7, 0, 0, struct.pack(">II", 0, 0x1)) in received  # GOAWAY PROTOCOL_ERROR
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def test_a_header_block_that_never_ends_is_refused_not_stored(h2: Server) -> None:
    """HEADERS then CONTINUATION frames without END_HEADERS (the "CONTINUATION flood"): the
    block was stored whole, so one client grew the front end's memory without bound. Past
    the cap the connection ends (GOAWAY); the front end keeps serving."""
    import socket

    opened = _raw_frame(4, 0, 0) + _raw_frame(1, 0, 1, _call_headers(h2))
    flood = _raw_frame(9, 0, 1, b"\0" * 16000) * 64  # 1 MB of header block, never ended
    with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
        _until_closed(sock, opened + flood)
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def test_a_client_that_never_reads_its_answers_is_not_read_either(h2: Server) -> None:
    """Calls sent without ever reading the answers (a tiny receive buffer, never drained):
    once the answers back up the front end stops reading, so the client's sends block
    instead of the answers piling up in the front end's memory (they grew it ~3 MB/s)."""
    import socket
    import struct

    import hpack

    encoder = hpack.Encoder()
    message = b"\0" + struct.pack(">I", 6) + b"\x0a\x04conv"
    window = _raw_frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))
    sent, limit = 0, 60 << 20
    with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        acked = _raw_frame(4, 0, 0) + _raw_frame(4, 0x1, 0)  # ours and theirs: a handshake
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + acked + window)
        sock.settimeout(2)  # no progress for this long: the front end stopped reading
        stream, blocked = 1, False
        while sent < limit and not blocked:
            calls = b""
            for _ in range(500):
                calls += _raw_frame(1, 0x4, stream, _call_headers(h2, "ModelConfig", encoder))
                calls += _raw_frame(0, 0x1, stream, message)
                stream += 2
            try:
                sock.sendall(calls)
            except TimeoutError:
                blocked = True
            sent += len(calls)
    assert blocked, f"{sent} bytes of calls read while none of their answers was"
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def test_big_header_blocks_are_not_kept_after_their_call(h2: Server) -> None:
    """Repeated header blocks are cached by their bytes; 256 distinct 60 KB blocks on each of
    10 connections (calls that are answered at once) were all kept while the connections
    lived, +295 MB of the front end's memory. Only small blocks are cached now."""
    import socket

    import hpack

    def rss_mb() -> float:
        status = Path(f"/proc/{h2.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    before = rss_mb()
    sockets = []
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5)
        sockets.append(sock)
        calls = b"".join(
            _raw_frame(
                1,
                0x4 | 0x1,
                1 + 2 * i,
                hpack.Encoder().encode(
                    [
                        (":method", "POST"),
                        (":path", "/inference.GRPCInferenceService/ServerLive"),
                        ("x-pad", f"{i:05d}" + "a" * 60_000),  # too big for the table
                    ],
                    huffman=False,
                ),
            )
            for i in range(256)
        )
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _raw_frame(4, 0, 0) + calls)
    with grpc.insecure_channel(h2.grpc) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live
    ack = _raw_frame(6, 0x1, 0, b"pingpong")
    for sock in sockets:  # a PING's ACK: every block before it has been decoded
        sock.sendall(_raw_frame(6, 0, 0, b"pingpong"))
        received = b""
        while ack not in received:
            received += sock.recv(65536)
    grown = rss_mb() - before
    for sock in sockets:
        sock.close()
    assert grown < 100, f"the front end grew {grown:.0f} MB"


def test_a_connection_that_never_finishes_its_handshake_is_closed(h2: Server) -> None:
    """A client that connects and sends nothing, or only the preface and its SETTINGS, never
    acknowledging ours: closed after the handshake limit (10 s), as grpc.aio closed both (at
    60 s here). They were held forever, each a file descriptor."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=30) as silent,
        socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=30) as unacknowledged,
    ):
        unacknowledged.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _raw_frame(4, 0, 0))
        with grpc.insecure_channel(h2.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            for sock in (silent, unacknowledged):
                while sock.recv(65536):  # our SETTINGS, then a GOAWAY, then the end
                    pass
            assert stub.ServerLive(pb.ServerLiveRequest()).live  # an ordinary client stays


def test_a_call_whose_bytes_arrive_a_few_at_a_time_is_answered(h2: Server) -> None:
    """Frames cut anywhere by the network (inside the preface, a frame's head, its payload)
    are put back together: the call is answered as if sent at once."""
    import socket
    import struct

    message = pb.ServerLiveRequest().SerializeToString()
    sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _raw_frame(4, 0, 0)
    sent += _raw_frame(1, 0x4, 1, _call_headers(h2))
    sent += _raw_frame(0, 0x1, 1, b"\0" + struct.pack(">I", len(message)) + message)
    with socket.create_connection(("127.0.0.1", h2.grpc_port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(sent), 7):
            sock.sendall(sent[start : start + 7])
            time.sleep(0.002)  # separate reads on the server's side
        # the answer: SETTINGS, HEADERS, DATA with ServerLiveResponse(live=True), trailers
        live = pb.ServerLiveResponse(live=True).SerializeToString()
        answer = b"\0" + struct.pack(">I", len(live)) + live
        received = b""
        while answer not in received:
            chunk = sock.recv(65536)  # a socket timeout fails the test: no answer came
            assert chunk, "closed without answering"
            received += chunk
