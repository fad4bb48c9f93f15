"""Every TensorRT / CUDA name our two TensorRT modules use exists in the pinned real bindings
(images/versions.env: the worker image's TensorRT), and the check catches a removed one. What
it cannot see (signatures, the class a TensorRT name belongs to) is listed in
``tensorrt_api``'s docstring and docs/build.md.

The wheels come from PyPI through pip, once, into ~/.cache/trtops/wheels."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.builder import tensorrt_api as api

CACHE = Path.home() / ".cache" / "trtops" / "wheels"


@pytest.fixture(scope="module")
def trt() -> api.TensorRTSymbols:
    return api.TensorRTSymbols(api.download(api.pins()["TENSORRT_BINDINGS_WHEEL"], CACHE))


@pytest.fixture(scope="module")
def cuda() -> api.CudaRuntime:
    wheel = api.download(api.pins()["CUDA_BINDINGS_WHEEL"], CACHE)
    return api.CudaRuntime(wheel, CACHE / f"unpacked-{wheel.stem}")


def _missing(source: str, trt: api.TensorRTSymbols, cuda: api.CudaRuntime) -> set[str]:
    return {u.name for u, how in api.check(api.collect_uses(source), trt, cuda) if how is None}


def test_every_name_our_tensorrt_modules_use_exists_in_the_pinned_bindings(
    trt: api.TensorRTSymbols, cuda: api.CudaRuntime
) -> None:
    results = api.check(api.sources_uses(), trt, cuda)
    missing = sorted(f"{u.dotted()} ({u.source}:{u.line})" for u, how in results if how is None)
    assert not missing, f"not in TensorRT {trt.version} / cuda-bindings {cuda.version}: {missing}"
    assert trt.version == api.pins()["TENSORRT_VERSION"]  # the bindings of the image's TensorRT


def test_the_collector_sees_the_calls_that_matter() -> None:
    """A collector gone blind would pass the check above with nothing checked."""
    names = {(u.library, u.name) for u in api.sources_uses()}
    for name in (
        "build_serialized_network",
        "deserialize_cuda_engine",
        "execute_async_v3",
        "set_tensor_address",
        "set_memory_pool_limit",
        "nptype",
    ):
        assert (api.TENSORRT, name) in names
    for name in ("cudaMalloc", "cudaMemcpyHostToDevice", "cudaStreamSynchronize", "major"):
        assert (api.CUDA_RUNTIME, name) in names


TENSORRT_10 = """
import tensorrt as trt
from cuda.bindings import runtime as cudart

def _check(result, what):
    return result[1]

def build(path):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    config = builder.create_builder_config()
    config.max_workspace_size = 1 << 30
    engine = builder.build_engine(network, config)
    context = engine.create_execution_context()
    for i in range(engine.num_bindings):
        context.execute_async_v2([], 0)
    props = _check(cudart.cudaGetDeviceProperties(0), "props")
    return props.computeCapability, cudart.cudaMallocFoo(1)
"""


def test_removed_tensorrt_10_names_fail_the_check(
    trt: api.TensorRTSymbols, cuda: api.CudaRuntime
) -> None:
    assert _missing(TENSORRT_10, trt, cuda) == {
        "EXPLICIT_BATCH",  # TensorRT 11 networks are always explicit batch
        "max_workspace_size",  # -> set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)
        "build_engine",  # -> build_serialized_network
        "num_bindings",  # -> num_io_tensors
        "execute_async_v2",  # -> execute_async_v3
        "computeCapability",  # cudaDeviceProp has major/minor
        "cudaMallocFoo",
    }


def test_names_are_followed_through_self_helpers_and_unpacking(
    trt: api.TensorRTSymbols, cuda: api.CudaRuntime
) -> None:
    source = """
import importlib

def _import():
    import tensorrt as trt
    from cuda.bindings import runtime as cudart
    return trt, cudart

class B:
    def __init__(self):
        self._trt, self._cudart = _import()
        self._rt = importlib.import_module("tensorrt").Runtime(None)

    def run(self):
        engine = self._rt.deserialize_cuda_engine(b"")
        engine.no_such_engine_call()
        trt, cudart = self._trt, self._cudart
        return trt.NoSuchEnum.X, cudart.cudaMemcpyKind.cudaMemcpyNowhere
"""
    assert _missing(source, trt, cuda) == {"no_such_engine_call", "NoSuchEnum", "cudaMemcpyNowhere"}


def _imports(path: Path) -> set[str]:
    found = set()
    text = path.read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    found |= set(re.findall(r"import_module\(\"([\w.]+)\"\)", text))
    return {m for m in found if m.split(".")[0] in ("tensorrt", "cuda")}


def test_only_the_two_tensorrt_modules_import_tensorrt_or_cuda() -> None:
    """The check reads these two files; a third importer, or another CUDA binding module (the old
    ``from cuda import cudart``), would escape it."""
    importers = {
        path.relative_to(api.ROOT)
        for top in ("worker", "operator")
        for path in (api.ROOT / top).rglob("*.py")
        if _imports(path)
    }
    assert importers == {p.relative_to(api.ROOT) for p in api.SOURCES}
    for path in api.SOURCES:
        assert _imports(path) <= {"tensorrt", "cuda.bindings", "cuda.bindings.runtime"}
