"""A drop-in for Triton's clients: NVIDIA's ``tritonclient`` (HTTP and gRPC) used unchanged.

Model configuration and statistics, compressed HTTP, refused Triton features, warm-up on models
that refuse sample inputs, and Triton's unknown-model wording.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.worker import Server, start_server

from .conftest import conv_input, infer_body
from .models import parse_model
from .test_rest import reference

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402  # after the skip


@pytest.fixture
def http(server: Server) -> Iterator[object]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


@pytest.fixture
def grpc_(server: Server) -> Iterator[object]:
    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


def conv_config(instances: int) -> dict[str, object]:
    """Triton's configuration for the shared conv server (max batch 8, delay 20 ms)."""
    return {
        "name": "conv",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
        "instance_group": [{"name": "conv", "kind": "KIND_CPU", "count": instances}],
        "dynamic_batching": {"max_queue_delay_microseconds": 20000},
    }


def test_model_config_over_http_and_grpc(server: Server, http: object, grpc_: object) -> None:
    """What perf_analyzer and model_analyzer read: batch limit, dims without the batch dim."""
    meta = requests.get(f"{server.url}/v2/models/conv", timeout=5).json()
    expected = conv_config(meta["parameters"]["instances"])
    assert http.get_model_config("conv") == expected  # type: ignore[attr-defined]
    assert http.get_model_config("conv", "r1") == expected  # type: ignore[attr-defined]
    config = grpc_.get_model_config("conv", as_json=True)["config"]  # type: ignore[attr-defined]
    assert config["max_batch_size"] == 8
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "dims": ["3", "32", "32"]}
    ]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "20000"}
    assert config["instance_group"] == expected["instance_group"]


def test_unbatched_model_config_has_the_whole_shape(model_dir: Path, tmp_path: Path) -> None:
    s = start_server(tmp_path, "--model", str(model_dir / "strings.onnx"), "--model-name", "echo")
    try:
        config = requests.get(f"{s.url}/v2/models/echo/config", timeout=5).json()
        assert config["max_batch_size"] == 0
        assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [-1]}]
        assert "dynamic_batching" not in config
    finally:
        assert s.stop() == 0


@pytest.fixture(scope="module")
def two_front_ends(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two front ends: whichever answers, the statistics count both."""
    s = start_server(
        tmp_path_factory.mktemp("stats"),
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--revision",
        "r1",
        "--max-batch-size",
        "8",
        "--front-ends",
        "2",
    )
    yield s
    assert s.stop() == 0


def test_statistics_count_what_the_server_did(two_front_ends: Server) -> None:
    server = two_front_ends
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc_ = grpcclient.InferenceServerClient(server.grpc)

    def stats() -> dict[str, object]:
        (entry,) = http.get_inference_statistics("conv")["model_stats"]
        return entry  # type: ignore[no-any-return]

    before = stats()
    # 15 new connections: the kernel spreads them over both front ends (all on one: 2^-14)
    for rows in (1, 2, 3, *[1] * 12):
        assert requests.post(server.infer_url(), json=infer_body(conv_input(rows)), timeout=10).ok
    assert requests.post(server.infer_url(), json={"inputs": 1}, timeout=10).status_code == 400
    deadline = time.monotonic() + 10  # each front end publishes its counts once a second
    while (after := stats())["inference_count"] != before["inference_count"] + 18:  # type: ignore[operator]
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    assert (after["name"], after["version"]) == ("conv", "r1")
    assert after["execution_count"] - before["execution_count"] == 15  # type: ignore[operator]
    done, was = after["inference_stats"], before["inference_stats"]
    assert done["success"]["count"] - was["success"]["count"] == 15  # type: ignore[index]
    assert done["fail"]["count"] - was["fail"]["count"] == 1  # type: ignore[index]
    assert done["compute_infer"]["ns"] > was["compute_infer"]["ns"]  # type: ignore[index]
    sizes = {b["batch_size"] for b in after["batch_stats"]}  # type: ignore[attr-defined]
    assert {1, 2, 3} <= sizes
    every = requests.get(f"{server.url}/v2/models/stats", timeout=5).json()["model_stats"]
    assert [m["name"] for m in every] == ["conv"]
    over_grpc = grpc_.get_inference_statistics("conv", as_json=True)
    assert int(over_grpc["model_stats"][0]["inference_count"]) >= after["inference_count"]  # type: ignore[operator]
    http.close()
    grpc_.close()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(
    http: object, model_dir: Path, algorithm: str, binary: bool
) -> None:
    x = conv_input(2, seed=9)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = http.infer(  # type: ignore[attr-defined]
        "conv",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("logits"), reference(model_dir, x))


def test_gzip_json_and_compression_refusals(server: Server) -> None:
    import json

    body = json.dumps(infer_body(conv_input(1))).encode()
    ok = requests.post(
        server.infer_url(),
        data=gzip.compress(body),
        headers={"Content-Encoding": "gzip"},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text
    bomb = zlib.compress(b" " * (50 << 20))  # 50 MB of spaces in 50 kB: over the 1 MB limit
    refused = requests.post(
        server.infer_url(), data=bomb, headers={"Content-Encoding": "deflate"}, timeout=10
    )
    assert refused.status_code == 413
    wrong = requests.post(
        server.infer_url(), data=body, headers={"Content-Encoding": "br"}, timeout=10
    )
    assert wrong.status_code == 400
    assert "gzip or deflate" in wrong.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "output", "word"),
    [
        ({"sequence_id": 7, "sequence_start": True}, {}, "sequence batching"),
        ({}, {"class_count": 3}, "classification"),
    ],
)
def test_unimplemented_triton_features_are_refused(
    http: object, grpc_: object, kwargs: dict[str, object], output: dict[str, object], word: str
) -> None:
    x = conv_input(1)
    for module, client, status in ((httpclient, http, "400"), (grpcclient, grpc_, "UNIMPLEMENTED")):
        tensor = module.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        wanted = module.InferRequestedOutput("logits", **output)
        with pytest.raises(InferenceServerException) as info:
            client.infer("conv", [tensor], outputs=[wanted], **kwargs)  # type: ignore[attr-defined]
        assert word in info.value.message()
        assert status in str(info.value.status())


def test_shared_memory_is_refused(http: object) -> None:
    x = conv_input(1)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_shared_memory("region0", x.nbytes)
    with pytest.raises(InferenceServerException) as info:
        http.infer("conv", [tensor])  # type: ignore[attr-defined]
    assert "shared-memory" in info.value.message()


def test_unknown_model_wording_matches_triton(http: object, grpc_: object) -> None:
    """Triton's examples check ``"Request for unknown model" in ex.message()``."""
    for client in (http, grpc_):
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("wrong_model_name")  # type: ignore[attr-defined]
        assert info.value.message().startswith("Request for unknown model")


def test_a_string_model_triton_style_starts_and_refuses_text_it_cannot_parse(
    tmp_path: Path,
) -> None:
    """Warm-up feeds "0" (a number parser takes it); "" from a client is that client's 400."""
    s = start_server(
        tmp_path, "--model", str(parse_model(tmp_path / "p.onnx")), "--model-name", "p"
    )
    client = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
    try:
        meta = requests.get(f"{s.url}/v2/models/p", timeout=5).json()
        assert meta["parameters"]["warmup"] == "done"
        text = np.array([[b"42"], [b"-7"]], dtype=np.object_)
        tensor = httpclient.InferInput("text", [2, 1], "BYTES")
        tensor.set_data_from_numpy(text)
        assert client.infer("p", [tensor]).as_numpy("number").tolist() == [[42], [-7]]
        tensor.set_data_from_numpy(np.array([[b""], [b"1"]], dtype=np.object_))
        with pytest.raises(InferenceServerException) as info:
            client.infer("p", [tensor])
        assert info.value.status() == "400"
        assert s.metric("trtops_requests_total", outcome="server_error") == 0
    finally:
        client.close()
        assert s.stop() == 0


def test_warmup_refused_by_the_model_is_skipped_and_reported(tmp_path: Path) -> None:
    """A lookup whose table has no row for the sample ids: the server serves anyway."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "ten"], ["shifted"]),
            helper.make_node("Gather", ["table", "shifted"], ["vectors"]),
        ],
        "offset",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(np.ones((4, 2), np.float32), "table"),
            numpy_helper.from_array(np.array(10, np.int64), "ten"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "offset.onnx"))
    s = start_server(tmp_path, "--model", str(tmp_path / "offset.onnx"), "--model-name", "o")
    try:
        meta = requests.get(f"{s.url}/v2/models/o", timeout=5).json()
        assert meta["parameters"]["warmup"].startswith("skipped")
        assert "warm-up skipped" in s.output()
        body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1], "data": [-9]}]}
        assert requests.post(s.infer_url("o"), json=body, timeout=10).status_code == 200
    finally:
        assert s.stop() == 0
    off = start_server(
        tmp_path, "--model", str(tmp_path / "offset.onnx"), "--model-name", "o", "--no-warmup"
    )
    try:
        meta = requests.get(f"{off.url}/v2/models/o", timeout=5).json()
        assert meta["parameters"]["warmup"] == "off"
    finally:
        assert off.stop() == 0


def _perf_analyzer() -> tuple[str, dict[str, str]] | None:
    """NVIDIA's perf_analyzer (shipped in tritonclient's wheel) and the environment it needs:
    libcudart.so.12 from nvidia-cuda-runtime-cu12 even for CPU-only use; None if it cannot run."""
    import os
    import shutil
    import subprocess

    binary = shutil.which("perf_analyzer")
    if binary is None:
        return None
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        lib = os.path.join(nvidia.cuda_runtime.__path__[0], "lib")
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    except ImportError:
        pass
    probe = subprocess.run([binary, "--help"], capture_output=True, env=env, check=False)
    if b"error while loading shared libraries" in probe.stderr + probe.stdout:
        return None
    return binary, env


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_unchanged(server: Server, protocol: str) -> None:
    """It reads the model configuration for the batch limit and input dims, then measures."""
    import subprocess

    found = _perf_analyzer()
    if found is None:
        pytest.skip("perf_analyzer or its shared libraries (libb64, libcudart) are missing")
    binary, env = found
    port = server.http_port if protocol == "http" else server.grpc_port
    run = subprocess.run(
        [
            *(binary, "-m", "conv", "-u", f"127.0.0.1:{port}", "-i", protocol),
            *("--concurrency-range", "2:2", "--measurement-mode", "count_windows"),
            # any three windows count as stable: this is whether it runs, not a benchmark
            *("--measurement-request-count", "30", "--stability-percentage", "999"),
            *("--max-trials", "10"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Throughput:" in run.stdout
