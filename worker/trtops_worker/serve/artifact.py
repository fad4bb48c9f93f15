"""Reading a build output folder (``<storage>/<key>/metadata.json``) into what ``serve`` needs.

The build writes ``backend``, ``precision``, ``artifact`` (the plan or ORT model file name),
``converted_onnx`` (the precision-converted ONNX, the CPU fallback) and ``inputs``/``outputs``.
Only the fields serving uses are read; unknown fields are left to the build side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Artifact", "ArtifactError", "read_artifact"]


class ArtifactError(Exception):
    """The artifact folder is missing files or its metadata is malformed."""


@dataclass(frozen=True)
class Artifact:
    backend: str
    precision: str
    model: Path
    fallback_model: Path | None


def _file(folder: Path, meta: dict[str, Any], field: str, *, required: bool) -> Path | None:
    name = meta.get(field)
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ArtifactError(f"metadata.json: '{field}' must be a plain file name, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise ArtifactError(f"{path} (metadata.json '{field}') does not exist")
    return path


def read_artifact(folder: Path) -> Artifact:
    try:
        meta = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {folder / 'metadata.json'}: {e}") from None
    if not isinstance(meta, dict):
        raise ArtifactError("metadata.json must hold a JSON object")
    backend = meta.get("backend")
    if backend not in ("tensorrt", "onnxruntime"):
        raise ArtifactError(f"metadata.json: unknown backend {backend!r}")
    model = _file(folder, meta, "artifact", required=True)
    assert model is not None
    return Artifact(
        backend=backend,
        precision=str(meta.get("precision", "")),
        model=model,
        fallback_model=_file(folder, meta, "converted_onnx", required=False),
    )
