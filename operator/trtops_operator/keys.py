"""Build identities and object names, derived from the spec alone.

The worker's cache key (``trtops_worker.cachekey``) hashes the model's bytes, the TensorRT version
and the GPU's compute capability: things only a pod on the GPU node can see. The operator never
reads model bytes, so it hashes what stands for them in the spec, in the same canonical JSON:

- the model: its ``sha256`` pin when given (the same bytes at two URIs share a plan), else its URI;
- the worker image instead of the TensorRT version (the image pins TensorRT);
- the GPU product (the node label) instead of the compute capability (a product has one).

Everything else (precision, calibration for quantized precisions, profiles, builder settings,
backend) is the worker's own ingredient list. A Job's name is a hash of the key, the storage claim
(a plan exists only on the claim it was built on) and the accuracy gate (a different gate re-runs
the check on the cached plan), so creating it is idempotent across resources and restarts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from trtops_worker.cachekey import KEY_SCHEMA, canonical_json

from trtops_operator.models import TrtEngineSpec

__all__ = [
    "CPU_TARGET",
    "build_key",
    "gate_json",
    "job_name",
    "revision_of",
    "serving_name",
    "target_label",
]

CPU_TARGET = "cpu"
QUANTIZED = ("int8", "fp8")
_NAME_MAX = 63


def _sha256(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode("ascii")).hexdigest()


def build_key(
    spec: TrtEngineSpec,
    gpu_product: str | None,
    worker_image: str,
    compute_capability: str | None = None,
    rebuild: str | None = None,
) -> str:
    """The build identity of one target (sha256 hex): equal keys build byte-identical plans.
    ``compute_capability``: the product's pin, if any (a pinned build is another plan);
    ``rebuild``: the scheduled rebuild the plan comes from (``rebuild.py``), None for none."""
    build = spec.build
    calibration = None
    if build.precision in QUANTIZED and build.calibration is not None:
        calibration = {
            "uri": build.calibration.uri,
            "method": build.calibration.method,
            "maxSamples": build.calibration.max_samples,
        }
        if build.calibration.source == "sample":  # (absent for "uri": keys as before it existed)
            calibration |= {
                "source": "sample",
                "minSampleRows": build.calibration.min_sample_rows,
            }
    model = {"sha256": spec.model.sha256} if spec.model.sha256 else {"uri": spec.model.uri}
    device = {"kind": "cpu"} if gpu_product is None else {"kind": "gpu", "gpuProduct": gpu_product}
    if gpu_product is not None and compute_capability is not None:
        device["computeCapability"] = compute_capability
    rebuilt = {"rebuild": rebuild} if rebuild is not None else {}
    return _sha256(
        {
            **rebuilt,
            "schema": KEY_SCHEMA,
            "source": "spec",
            "model": model,
            "precision": build.precision,
            "calibration": calibration,
            "profiles": [
                {"input": p.input, "min": p.min, "opt": p.opt, "max": p.max}
                for p in sorted(build.profiles, key=lambda p: p.input)
            ],
            "builder": {
                "optimizationLevel": build.optimization_level,
                "workspaceMiB": build.workspace_mib,
            },
            "backend": {"name": spec.serving.backend, "image": worker_image},
            "device": device,
        }
    )


def gate_json(spec: TrtEngineSpec) -> dict[str, Any] | None:
    """The accuracy gate as it affects a build Job (None: no gate)."""
    acc = spec.build.accuracy
    if acc is None:
        return None
    gate = acc.model_dump(mode="json", by_alias=True, exclude_none=True)
    if acc.validation.source == "uri":  # the default: Job names as before the field existed
        for field in ("source", "minSampleRows"):
            gate["validation"].pop(field, None)
    return gate


def job_name(key: str, claim: str, gate: dict[str, Any] | None) -> str:
    """``trt-build-<20 hex>``: one name per (key, storage claim, accuracy gate)."""
    return "trt-build-" + _sha256({"key": key, "claim": claim, "gate": gate})[:20]


def revision_of(keys: Iterable[str]) -> str:
    """A revision names the set of plans it serves: it changes exactly when a plan key does."""
    return _sha256(sorted(keys))[:10]


def target_label(gpu_product: str | None) -> str:
    """The value of the ``trtops.dev/target`` label (GPU products are label values already)."""
    return gpu_product or CPU_TARGET


def serving_name(engine: str, gpu_product: str | None) -> str:
    """``<engine>-<target slug>``, at most 63 characters; a hash suffix keeps truncation unique."""
    slug = re.sub(r"[^a-z0-9]+", "-", target_label(gpu_product).lower()).strip("-") or "gpu"
    room = _NAME_MAX - len(engine) - 1
    if len(slug) > room:
        digest = hashlib.sha256(target_label(gpu_product).encode()).hexdigest()[:4]
        slug = slug[: max(room - 5, 1)].rstrip("-") + "-" + digest
    return f"{engine}-{slug}"
