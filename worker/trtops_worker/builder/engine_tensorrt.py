"""The TensorRT backend: the only module that imports ``tensorrt`` (and ``cuda``), lazily.

Written against the TensorRT 11 Python API: strongly typed networks (precision comes from the
converted ONNX: dtypes and Q/DQ nodes), ``create_network(0)``, ``build_serialized_network``,
``set_memory_pool_limit``. A built plan is executed only through the server's executor
(``serve.backend_tensorrt``), by the accuracy gate and the self-benchmark alike. It runs only in
the GPU worker image; TensorRT cannot be installed where the tests run, so the names used here are
checked statically against the real bindings (tests/builder/test_tensorrt_api.py) and
``hack/gpu-smoke.sh`` is the first run on a GPU.

Timing cache: the build starts from the store's shared cache for this TensorRT version and
device (``settings.timing_cache``, when there is one) and writes ``timing.cache`` into the key
folder; the pipeline then refreshes the shared copy, so later builds on the same GPU type
reuse the measured tactics. Optimization level 0 ignores the cache (TensorRT's rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trtops_worker.builder.benchmark import latency_summary, time_runs
from trtops_worker.builder.engine import ArtifactRunner, EngineSettings
from trtops_worker.builder.errors import BackendError, ConfigError, EngineError
from trtops_worker.cachekey import Device

__all__ = ["TIMING_CACHE", "TensorRTBackend", "create"]

TIMING_CACHE = "timing.cache"


def _import() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendError(
            "BackendUnavailable",
            f"the tensorrt backend needs TensorRT and cuda-python (the GPU worker image): {exc}",
        ) from exc
    return trt, cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns ``(error, *values)``; turn a non-success error into a BuildFailed."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError("BuildFailed", f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTBackend:
    name = "tensorrt"
    artifact_name = "engine.plan"

    def __init__(self) -> None:
        self._trt, self._cudart = _import()
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)

    def version(self) -> str:
        return str(self._trt.__version__)

    def device(self, gpu_product: str | None) -> Device:
        """Device 0, as the serving pod's compatibility guard will see it."""
        from trtops_worker.serve.backend_tensorrt import environment

        target = environment()
        return Device(target.compute_capability, gpu_product or target.gpu)

    def build(self, converted: Path, folder: Path, settings: EngineSettings) -> Path:
        trt = self._trt
        declared = {p.input for p in settings.profiles}
        undeclared = [s.name for s in settings.inputs if -1 in s.shape and s.name not in declared]
        if undeclared:
            raise ConfigError(
                "InvalidProfile", f"dynamic inputs {undeclared} need a --profile NAME:MIN:OPT:MAX"
            )

        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 11: always explicit batch, strongly typed
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(converted)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(
                "BuildFailed", f"TensorRT's ONNX parser rejected the model: {errors[:1000]}"
            )

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
        config.builder_optimization_level = settings.optimization_level
        if settings.precision != "tf32":
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default; FP32 means FP32
        seed = (
            settings.timing_cache.read_bytes()
            if settings.timing_cache and settings.timing_cache.is_file()
            else b""
        )
        cache = config.create_timing_cache(seed)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a foreign cache is not used

        if settings.profiles:
            profile = builder.create_optimization_profile()
            for p in settings.profiles:  # one profile object carrying every declared input's range
                profile.set_shape(p.input, p.min, p.opt, p.max)
            config.add_optimization_profile(profile)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(
                "BuildFailed", "TensorRT build_serialized_network returned nothing (see the log)"
            )
        artifact = folder / self.artifact_name
        artifact.write_bytes(bytes(plan))
        (folder / TIMING_CACHE).write_bytes(bytes(config.get_timing_cache().serialize()))
        return artifact

    def runs_on(self) -> str:
        return f"TensorRT {self.version()} on {self.device(None).gpu_product}"

    def runner(self, artifact: Path) -> ArtifactRunner:
        """The server's plan executor (``serve.backend_tensorrt``): one way to run a plan."""
        from trtops_worker.serve.backend_tensorrt import TensorRTBackend as PlanExecutor

        return _PlanRunner(PlanExecutor(artifact))

    def benchmark(
        self,
        artifact: Path,
        feeds: dict[int, dict[str, Any]],
        iterations: int,
        time_budget_s: float,
    ) -> dict[str, Any]:
        """Latency through the server's executor (host copies included, as a client sees it);
        memory is the device memory taken from before the plan loads to the lowest free point."""
        free_before, _ = _check(self._cudart.cudaMemGetInfo(), "cudaMemGetInfo")
        lowest_free = free_before
        results = []
        runner = self.runner(artifact)
        try:
            for batch_size, feed in sorted(feeds.items()):

                def once(f: dict[str, Any] = feed) -> object:
                    return runner.run(f)

                latencies = time_runs(once, iterations, time_budget_s)
                free_now, _ = _check(self._cudart.cudaMemGetInfo(), "cudaMemGetInfo")
                lowest_free = min(lowest_free, free_now)
                results.append(latency_summary(latencies, batch_size))
        finally:
            runner.close()
        return {
            "runtime": f"tensorrt {self.version()}",
            "device": self.device(None).gpu_product,
            "batches": results,
            "peakMemoryMiB": round((free_before - lowest_free) / (1 << 20), 2),
            "memoryMethod": "gpu-free-memory-delta (cudaMemGetInfo)",
        }


class _PlanRunner:
    """The build's view of the server's executor: the gate and the benchmark call ``run``."""

    def __init__(self, executor: Any) -> None:
        self._executor = executor

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result: dict[str, np.ndarray] = self._executor.infer(feed)
        except Exception as exc:  # DeviceError, InvalidInput: the plan cannot run this feed
            raise EngineError("BuildFailed", f"TensorRT could not run the plan: {exc}") from exc
        return result

    def close(self) -> None:
        self._executor.close()


def create() -> TensorRTBackend:
    return TensorRTBackend()
