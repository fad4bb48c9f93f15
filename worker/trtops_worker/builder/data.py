"""Calibration and validation data: ``.npz`` (one array per model input, keyed by input name) or
``.npy`` (single-input models). Axis 0 is the sample axis; arrays are checked against the model's
inputs before any expensive work, so a mismatch fails in a second with the names and shapes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtops_worker.builder.errors import BuildError, CalibrationError, ConfigError
from trtops_worker.builder.model import TensorSpec, sha256_file

__all__ = ["InputSet", "batches", "load_input_set"]


@dataclass(frozen=True)
class InputSet:
    """Arrays keyed by input name, all with the same number of samples on axis 0."""

    arrays: dict[str, np.ndarray]
    sha256: str
    samples: int


def _fail(kind: str, reason_suffix: str, message: str) -> BuildError:
    if kind == "calibration":
        return CalibrationError(f"Calibration{reason_suffix}", message)
    return ConfigError(f"Validation{reason_suffix}", message)


def _read(path: Path, inputs: tuple[TensorSpec, ...], kind: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise _fail(kind, "NotFound", f"{kind} data {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if len(inputs) != 1:
                names = [s.name for s in inputs]
                raise _fail(
                    kind,
                    "Mismatch",
                    f"{path.name} holds one array, the model has inputs {names}: use .npz",
                )
            return {inputs[0].name: array}
    except BuildError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(kind, "Unreadable", f"cannot read {kind} data {path.name}: {exc}") from exc
    raise _fail(kind, "Unreadable", f"{kind} data must be .npz or .npy, got {path.name}")


def _compatible(spec: TensorSpec, array: np.ndarray) -> bool:
    want = spec.numpy_dtype
    if want.kind == "f":
        return array.dtype.kind in "fiu"
    if want.kind in "iu":
        return array.dtype.kind in "iu"
    return array.dtype == want


def load_input_set(
    path: Path, inputs: tuple[TensorSpec, ...], max_samples: int, *, kind: str
) -> InputSet:
    """Read, check against ``inputs`` and truncate to the first ``max_samples`` samples.

    ``kind`` is ``"calibration"`` or ``"validation"`` and decides the failure reasons.
    """
    arrays = _read(path, inputs, kind)
    want = {s.name for s in inputs}
    missing, extra = sorted(want - arrays.keys()), sorted(arrays.keys() - want)
    if missing or extra:
        raise _fail(
            kind,
            "Mismatch",
            f"{path.name}: arrays must be named after the model inputs {sorted(want)}; "
            f"missing {missing}, unexpected {extra}",
        )
    out: dict[str, np.ndarray] = {}
    counts: set[int] = set()
    for spec in inputs:
        array = arrays[spec.name]
        shape = array.shape
        if len(shape) != len(spec.shape) or any(
            m != -1 and m != a
            for i, (m, a) in enumerate(zip(spec.shape, shape, strict=True))
            if i > 0
        ):
            raise _fail(
                kind,
                "Mismatch",
                f"{path.name}: {spec.name} has shape {list(shape)}, the model expects "
                f"{list(spec.shape)} (-1 = any; axis 0 is the sample axis)",
            )
        if not _compatible(spec, array):
            raise _fail(
                kind,
                "Mismatch",
                f"{path.name}: {spec.name} is {array.dtype}, the model expects {spec.datatype}",
            )
        counts.add(int(shape[0]) if shape else 1)
        out[spec.name] = np.ascontiguousarray(
            array[:max_samples].astype(spec.numpy_dtype, copy=False)
        )
    if len(counts) != 1:
        raise _fail(
            kind,
            "Mismatch",
            f"{path.name}: arrays disagree on the number of samples: {sorted(counts)}",
        )
    samples = min(counts.pop(), max_samples)
    if samples < 1:
        raise _fail(kind, "Mismatch", f"{path.name} holds no samples")
    return InputSet(arrays=out, sha256=sha256_file(path), samples=samples)


def batches(
    arrays: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], preferred: int
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of ``preferred`` samples (of the model's batch size where fixed)."""
    fixed = {s.shape[0] for s in inputs if s.shape and s.shape[0] > 0}
    total = min(len(a) for a in arrays.values())
    if len(fixed) == 1:
        size = fixed.pop()
        stop = total - total % size  # a fixed-batch model only takes full batches
    else:
        size, stop = max(1, preferred), total
    for start in range(0, stop, size):
        yield {name: a[start : start + size] for name, a in arrays.items()}
