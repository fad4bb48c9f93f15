"""The content address of a built artifact: one key per set of build ingredients.

Pure on purpose (``hashlib`` and ``json`` only): the operator imports this module to decide
whether a plan already exists before it starts a Job, and must not pull numpy, onnx or TensorRT.
Everything that changes the bytes of an artifact is an ingredient; everything that only judges
it (accuracy thresholds, validation data, benchmark batch sizes) is not, so tightening a gate
never forces a rebuild.

The key is the sha256 (hex) of the canonical JSON of :meth:`KeyIngredients.to_json`: sorted
keys, no whitespace, ASCII. ``KEY_SCHEMA`` is part of it, so a change to what goes in the key
moves every artifact to a fresh address instead of silently reusing old ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKENDS",
    "CALIBRATION_METHODS",
    "KEY_SCHEMA",
    "PRECISIONS",
    "CalibrationIngredients",
    "Device",
    "KeyIngredients",
    "ProfileIngredients",
    "cache_key",
    "canonical_json",
]

KEY_SCHEMA = 1
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
BACKENDS = ("onnxruntime", "tensorrt")
CALIBRATION_METHODS = ("entropy", "max", "percentile")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_sha256(value: str, what: str) -> None:
    if not _SHA256.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex digits, got {value!r}")


@dataclass(frozen=True)
class CalibrationIngredients:
    """The calibration data (by digest) and how it is used."""

    sha256: str
    method: str
    max_samples: int

    def __post_init__(self) -> None:
        _check_sha256(self.sha256, "calibration sha256")
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}"
            )
        if self.max_samples < 1:
            raise ValueError(f"calibration max samples must be >= 1, got {self.max_samples}")

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "method": self.method, "maxSamples": self.max_samples}


@dataclass(frozen=True)
class ProfileIngredients:
    """One optimization profile entry: the shape range of one dynamic input."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }


@dataclass(frozen=True)
class Device:
    """What the artifact is tied to: a GPU (compute capability and product) or the CPU."""

    compute_capability: str | None = None  # "9.0"
    gpu_product: str | None = None  # "NVIDIA-H100-80GB-HBM3" (the node label value)

    @property
    def kind(self) -> str:
        return "gpu" if self.compute_capability or self.gpu_product else "cpu"

    def to_json(self) -> dict[str, Any]:
        if self.kind == "cpu":
            return {"kind": "cpu"}
        return {
            "kind": "gpu",
            "computeCapability": self.compute_capability,
            "gpuProduct": self.gpu_product,
        }


@dataclass(frozen=True)
class KeyIngredients:
    """Everything that determines the bytes of an artifact."""

    model_sha256: str
    precision: str
    backend: str
    backend_version: str
    device: Device = field(default_factory=Device)
    calibration: CalibrationIngredients | None = None
    profiles: tuple[ProfileIngredients, ...] = ()
    optimization_level: int = 3
    workspace_mib: int = 2048

    def __post_init__(self) -> None:
        _check_sha256(self.model_sha256, "model sha256")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization level must be 0..5, got {self.optimization_level}")
        if self.workspace_mib < 1:
            raise ValueError(f"workspace must be >= 1 MiB, got {self.workspace_mib}")

    def to_json(self) -> dict[str, Any]:
        """The ingredients as JSON-ready data (also written to ``metadata.json``)."""
        return {
            "schema": KEY_SCHEMA,
            "modelSha256": self.model_sha256,
            "precision": self.precision,
            # Calibration only shapes quantized precisions; elsewhere it must not split the cache.
            "calibration": self.calibration.to_json() if self.calibration is not None else None,
            # Order of profiles does not change the artifact's meaning: sort by input name.
            "profiles": [p.to_json() for p in sorted(self.profiles, key=lambda p: p.input)],
            "builder": {
                "optimizationLevel": self.optimization_level,
                "workspaceMiB": self.workspace_mib,
            },
            "backend": {"name": self.backend, "version": self.backend_version},
            "device": self.device.to_json(),
        }


def canonical_json(data: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def cache_key(ingredients: KeyIngredients) -> str:
    """sha256 hex of the canonical JSON of ``ingredients``."""
    return hashlib.sha256(canonical_json(ingredients.to_json()).encode("ascii")).hexdigest()
