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

from trtops_worker.build.model import TensorSpec
from trtops_worker.cachekey import Device, ProfileIngredients

__all__ = ["BACKEND_MODULES", "Backend", "EngineSettings", "load_backend"]


@dataclass(frozen=True)
class EngineSettings:
    precision: str
    inputs: tuple[TensorSpec, ...]
    profiles: tuple[ProfileIngredients, ...]
    optimization_level: int
    workspace_mib: int
    timing_cache: Path | None = None  # a previous timing cache to start from (TensorRT)


class Backend(Protocol):
    name: str
    artifact_name: str
    # What the accuracy gate can run on CPU: the artifact itself, or only the converted ONNX.
    gate_runs_artifact: bool

    def version(self) -> str: ...

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
    "onnxruntime": "trtops_worker.build.engine_onnxruntime",
    "tensorrt": "trtops_worker.build.engine_tensorrt",
}


def load_backend(name: str) -> Backend:
    """The backend named ``name``; raises ``BackendError`` when its runtime is missing."""
    module = importlib.import_module(BACKEND_MODULES[name])
    backend: Backend = module.create()
    return backend
