"""The engine stage's one small interface, and the registry of backends.

A backend turns the precision-converted ONNX into the artifact that serving loads. Backends are
imported only when chosen, so a machine without TensorRT builds ONNX Runtime artifacts and a
TensorRT build fails fast with ``BackendUnavailable`` instead of an ImportError.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trtops_worker.builder.model import TensorSpec
from trtops_worker.cachekey import Device, ProfileIngredients

__all__ = ["BACKEND_MODULES", "ArtifactRunner", "Backend", "EngineSettings", "load_backend"]


@dataclass(frozen=True)
class EngineSettings:
    precision: str
    inputs: tuple[TensorSpec, ...]
    profiles: tuple[ProfileIngredients, ...]
    optimization_level: int
    workspace_mib: int
    timing_cache: Path | None = None  # a previous timing cache to start from (TensorRT)


class ArtifactRunner(Protocol):
    """Runs a built artifact the way serving does: ``run(feed) -> {output name: array}``."""

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    artifact_name: str

    def version(self) -> str: ...

    def runs_on(self) -> str:
        """Where ``runner`` executes, for reports: ``"TensorRT 11.2.1.2 on NVIDIA H200"``."""
        ...

    def runner(self, artifact: Path) -> ArtifactRunner:
        """The one way to execute the artifact: the gate, the self-benchmark and the server
        (TensorRT: ``serve.backend_tensorrt``) all run it through this."""
        ...

    def device(self, gpu_product: str | None) -> Device: ...

    def build(self, converted: Path, folder: Path, settings: EngineSettings) -> Path:
        """Write the artifact (and any cache files) into ``folder``; return the artifact path."""
        ...

    def benchmark(
        self,
        artifact: Path,
        feeds: dict[int, dict[str, Any]],
        iterations: int,
        time_budget_s: float,
    ) -> dict[str, Any]:
        """trtexec-style figures per batch size (keys of ``feeds``)."""
        ...


BACKEND_MODULES = {
    "onnxruntime": "trtops_worker.builder.engine_onnxruntime",
    "tensorrt": "trtops_worker.builder.engine_tensorrt",
}


def load_backend(name: str) -> Backend:
    """The backend named ``name``; raises ``BackendError`` when its runtime is missing."""
    module = importlib.import_module(BACKEND_MODULES[name])
    backend: Backend = module.create()
    return backend
