"""The ONNX Runtime backend (CPU): the CPU fallback's artifact, and the runner the accuracy gate
uses for every backend. The only module of the build stage that imports onnxruntime.

The artifact is the graph as ONNX Runtime optimizes it (``optimized_model_filepath``), so serving
skips that work at load. Builder optimization levels map onto ONNX Runtime's: 0 -> none,
1-2 -> basic, 3-5 -> extended. ``ORT_ENABLE_ALL`` is never used for a saved model: its layout
transforms are tied to the building CPU's instruction set, and the artifact must load anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trtops_worker.builder.benchmark import (
    MEMORY_METHOD,
    RssGrowth,
    in_fresh_process,
    latency_summary,
    time_runs,
)
from trtops_worker.builder.engine import EngineSettings
from trtops_worker.builder.errors import EngineError
from trtops_worker.cachekey import Device

__all__ = ["OnnxRuntimeBackend", "Runner", "create"]

_PROVIDERS = ["CPUExecutionProvider"]


def _level(optimization_level: int) -> ort.GraphOptimizationLevel:
    if optimization_level <= 0:
        return ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimization_level <= 2:
        return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


class Runner:
    """One ONNX Runtime session on CPU: ``run(feed) -> {output name: array}``."""

    def __init__(self, path: Path, *, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = (
            3  # warnings about unused initializers are not the user's business
        )
        try:
            self._session = ort.InferenceSession(str(path), options, providers=_PROVIDERS)
        except Exception as exc:
            raise EngineError(
                "BuildFailed", f"ONNX Runtime cannot load {path.name}: {_first_line(exc)}"
            ) from exc
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, feed)
        return {
            name: np.asarray(value) for name, value in zip(self.output_names, outputs, strict=True)
        }

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]


class OnnxRuntimeBackend:
    name = "onnxruntime"
    artifact_name = "model.ort.onnx"

    def version(self) -> str:
        return str(ort.__version__)

    def runs_on(self) -> str:
        return f"ONNX Runtime {ort.__version__} (CPU)"

    def runner(self, artifact: Path) -> Runner:
        return Runner(artifact)

    def device(self, gpu_product: str | None) -> Device:
        return Device()  # CPU artifacts don't depend on a GPU product, whatever the Job's target

    def build(self, converted: Path, folder: Path, settings: EngineSettings) -> Path:
        artifact = folder / self.artifact_name
        options = ort.SessionOptions()
        options.graph_optimization_level = _level(settings.optimization_level)
        options.optimized_model_filepath = str(artifact)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(converted), options, providers=_PROVIDERS)
        except Exception as exc:
            raise EngineError(
                "BuildFailed",
                f"ONNX Runtime (CPU) cannot run the {settings.precision} model: {_first_line(exc)}",
            ) from exc
        if not artifact.is_file():
            raise EngineError("BuildFailed", "ONNX Runtime wrote no optimized model")
        return artifact

    def benchmark(
        self,
        artifact: Path,
        feeds: dict[int, dict[str, Any]],
        iterations: int,
        time_budget_s: float,
    ) -> dict[str, Any]:
        return in_fresh_process(_benchmark, artifact, feeds, iterations, time_budget_s)


def _benchmark(
    artifact: Path, feeds: dict[int, dict[str, Any]], iterations: int, time_budget_s: float
) -> dict[str, Any]:
    """The self-benchmark, run in a fresh process so its memory figure is the model's."""
    results = []
    with RssGrowth() as peak:
        runner = Runner(artifact)
        for batch_size, feed in sorted(feeds.items()):

            def once(f: dict[str, np.ndarray] = feed) -> object:
                return runner.run(f)

            latencies = time_runs(once, iterations, time_budget_s)
            results.append(latency_summary(latencies, batch_size))
    return {
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "device": "cpu",
        "batches": results,
        "peakMemoryMiB": peak.mib,
        "memoryMethod": MEMORY_METHOD,
    }


def create() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend()
