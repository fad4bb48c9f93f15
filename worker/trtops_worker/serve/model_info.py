"""What the data plane says about the model it serves: its configuration (:class:`ServeConfig`),
Triton's model config, the request size limit, warm-up samples, and the statistics the front
ends of one pod share through a folder. Pure functions of the config, backend and batcher;
serve/dataplane.py calls them (and re-exports :class:`ServeConfig`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend
from .batching import Batcher
from .frontends import FRONT_END_ENV, MULTIPROC_ENV
from .statistics import merge_model_stats
from .types import DATATYPE_TO_NUMPY, TensorSpec

__all__ = [
    "ServeConfig",
    "body_limit",
    "gather_statistics",
    "model_config",
    "publish_statistics",
    "sample_input",
    "shared_folder",
]

_JSON_BYTES_PER_ELEMENT = 32
_MIN_BODY_BYTES = 4 << 20
_DEFAULT_BODY_BYTES = 32 << 20
_MAX_BODY_BYTES = 1 << 30

_STATS_PREFIX = "triton-stats-"


@dataclass(frozen=True)
class ServeConfig:
    model_name: str
    revision: str = ""
    precision: str = ""
    requested_backend: str = "onnxruntime"
    fallback_model: Path | None = None
    cpu_fallback: bool = False
    max_batch_size: int = 1
    max_queue_delay_us: int = 0
    max_queue_size: int = 128
    request_timeout_ms: int = 10_000
    intra_op_threads: int = 0
    intra_op_spinning: bool = True
    instances: int = 1  # batches on the backend at once (capped by what the backend allows)
    # One CPU instance: run batches on the event loop's thread (Batcher's ``on_loop``).
    run_on_loop: bool = True
    warmup: bool = True  # run sample batches before turning ready

    @property
    def version(self) -> str:
        """The one model version served: the revision, or "1" when none is given."""
        return self.revision or "1"


def model_config(config: ServeConfig, backend: Backend, batcher: Batcher) -> dict[str, Any]:
    """Triton's model configuration (``GET /v2/models/{m}/config``, gRPC ``ModelConfig``)
    for what this server really does, in Triton's JSON form: what perf_analyzer and
    model_analyzer read to size batches and build inputs.

    With dynamic batching ``max_batch_size`` is the batch limit and ``dims`` leave the batch
    dimension out; without it ``max_batch_size`` is 0 and ``dims`` are the whole shape
    (Triton's convention). BYTES is ``TYPE_STRING`` there.
    """

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = spec.shape[1:] if batcher.batching else spec.shape
        kind = "STRING" if spec.datatype == "BYTES" else spec.datatype
        return {"name": spec.name, "data_type": f"TYPE_{kind}", "dims": list(dims)}

    answer: dict[str, Any] = {
        "name": config.model_name,
        "platform": backend.platform,
        "backend": backend.name,
        "max_batch_size": batcher.max_batch_size if batcher.batching else 0,
        "input": [tensor(s) for s in backend.inputs],
        "output": [tensor(s) for s in backend.outputs],
        "instance_group": [
            {
                "name": config.model_name,
                "kind": "KIND_GPU" if backend.name == "tensorrt" else "KIND_CPU",
                "count": batcher.instances,
            }
        ],
    }
    if batcher.batching:
        answer["dynamic_batching"] = {
            "max_queue_delay_microseconds": batcher.describe()["max_queue_delay_microseconds"]
        }
    return answer


def body_limit(backend: Backend, batcher: Batcher) -> int:
    """The default request size limit in bytes: what the largest real request can take.

    A full batch of the model's inputs written as JSON text (``_JSON_BYTES_PER_ELEMENT``
    bytes per number, the worst case: ``-1.2345678901234567e-30,``), or
    ``_DEFAULT_BODY_BYTES`` when a non-batch dimension is dynamic, so the size is unknown;
    within ``_MIN_BODY_BYTES`` .. ``_MAX_BODY_BYTES``. One 64 MiB JSON body took 1.4 GB to
    parse, and ran as one batch, before there was a limit sized like this.
    """
    rows = batcher.max_batch_size if batcher.batching else 1
    elements = 0
    for spec in backend.inputs:
        dims = spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape
        if any(d < 0 for d in dims):
            return _DEFAULT_BODY_BYTES
        elements += math.prod(dims) * (rows if spec.shape and spec.shape[0] == -1 else 1)
    wanted = elements * _JSON_BYTES_PER_ELEMENT
    return max(_MIN_BODY_BYTES, min(_MAX_BODY_BYTES, wanted))


def sample_input(spec: TensorSpec, rows: int) -> np.ndarray:
    """A valid input for ``spec``: ``rows`` on a dynamic first dim, 1 on other dynamic dims,
    zeros (false for BOOL, the text "0" for BYTES: a number parser takes it, "" it refuses)."""
    shape = tuple(
        rows if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)
    )
    if spec.datatype == "BYTES":
        out = np.empty(shape, dtype=np.object_)
        out.fill("0")
        return out
    return np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])


def shared_folder() -> Path | None:
    """The front ends' shared folder (serve/frontends.py), when this process is one of them."""
    if FRONT_END_ENV in os.environ and MULTIPROC_ENV in os.environ:
        return Path(os.environ[MULTIPROC_ENV])
    return None


def publish_statistics(own: dict[str, Any]) -> None:
    """Write this front end's statistics entry to the shared folder (none: nothing to do)."""
    folder = shared_folder()
    if folder is not None:
        path = folder / f"{_STATS_PREFIX}{os.environ[FRONT_END_ENV]}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(own))
        temporary.replace(path)  # readers never see half a file


def gather_statistics(own: dict[str, Any]) -> dict[str, Any]:
    """Triton's statistics answer: ``own`` alone, or with several front ends every one's entry
    in the shared folder added up (``own`` was just published there)."""
    folder = shared_folder()
    if folder is None:
        return {"model_stats": [own]}
    entries = []
    for path in sorted(folder.glob(f"{_STATS_PREFIX}*.json")):
        with contextlib.suppress(OSError, ValueError):  # a front end writing it right now
            entries.append(json.loads(path.read_text()))
    return {"model_stats": [merge_model_stats(entries or [own])]}
