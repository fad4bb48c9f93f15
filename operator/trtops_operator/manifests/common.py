"""What every object the operator renders shares: the engine's identity, the plan a serving
Deployment runs, owner references, labels, the spec-hash annotation, pod placement and security
contexts, and where a spec URI is found inside a pod."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtops_worker import contract
from trtops_worker.cachekey import canonical_json
from trtops_worker.sources import is_remote, local_path

from trtops_operator import GROUP, KIND, VERSION
from trtops_operator.keys import target_label
from trtops_operator.models import Toleration, TrtEngineSpec

PLANS_MOUNT = "/plans"
SOURCE_SECRET_MOUNT = "/var/run/secrets/trtops/source"  # noqa: S105 - a mount path
GCS_CREDENTIALS_KEY = "gcs-credentials.json"
EXTRA_CLAIMS_MOUNT = "/mnt/claims"
TERMINATION_LOG = "/dev/termination-log"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# GPU Feature Discovery's labels of a node's GPU compute capability (e.g. 9 and 0 for 9.0).
GPU_COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
MANAGED_BY = contract.MANAGED_BY
HASH_ANNOTATION = contract.ANNOTATION_SPEC_HASH
KEY_ANNOTATION = contract.ANNOTATION_KEY
LABEL_MAX = 63
# Scratch (/tmp, HOME) of build and serving pods: bounded, so that a runaway writer is evicted
# instead of filling its node's disk. A build's TensorRT timing cache and tactic scratch fit.
BUILD_SCRATCH, SERVE_SCRATCH = "8Gi", "1Gi"
CLIENT_LABEL = "trtops.dev/client"  # a pod that may call an engine: the engine's name, or "true"


@dataclass(frozen=True)
class Engine:
    """The identity and the typed spec of one TrtEngine."""

    name: str
    namespace: str
    uid: str
    spec: TrtEngineSpec

    @property
    def model_name(self) -> str:
        return self.spec.serving.model_name or self.name


@dataclass(frozen=True)
class PlanRef:
    """What serving needs from a built plan."""

    target: str | None  # GPU product; None for the CPU (onnxruntime) build
    key: str
    path: str  # artifact directory under PLANS_MOUNT
    precision: str
    backend: str
    compute_capability: str | None = None  # the product's pin: serve on such GPUs only


def owner_reference(engine: Engine, *, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": engine.name,
        "uid": engine.uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def spec_hash(obj: dict[str, Any]) -> str:
    """Hash of an object as built (before the hash annotation is added): unchanged -> no write."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()[:16]


def stamped_hash(obj: Mapping[str, Any]) -> str:
    """The hash annotation an object carries ("" for none): built here, or read from a watch."""
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION, ""))


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Add the hash annotation to a fresh deep copy (no dict is shared between objects)."""
    obj = json.loads(canonical_json(obj))
    obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(obj)
    return obj


def resolve_uri(uri: str, storage_claim: str, sha256: str | None = None) -> tuple[str, str | None]:
    """Map a spec URI to a path in the pod, and the extra claim to mount read-only (if any).

    ``pvc://CLAIM/p`` is ``/plans/p`` when CLAIM is the storage claim, else ``/mnt/claims/CLAIM/p``;
    a relative path lives on the storage claim; a remote URI (s3, gs, https, hf) is where the
    ``fetch`` init container puts it on the storage claim (:mod:`trtops_worker.sources`).
    """
    if is_remote(uri):
        return f"{PLANS_MOUNT}/{local_path(uri, sha256)}", None
    if uri.startswith("pvc://"):
        claim, _, rest = uri.removeprefix("pvc://").partition("/")
        if claim == storage_claim:
            return f"{PLANS_MOUNT}/{rest}", None
        return f"{EXTRA_CLAIMS_MOUNT}/{claim}/{rest}", claim
    return f"{PLANS_MOUNT}/{uri.lstrip('/')}", None


def component_labels(engine: Engine, component: str, target: str | None) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": f"trtops-{component}",
        "trtops.dev/engine": engine.name,
        "trtops.dev/component": component,
        "trtops.dev/target": target_label(target),
    }


def gpu_placement(product: str, compute_capability: str | None = None) -> dict[str, Any]:
    selector = {GPU_PRODUCT_LABEL: product}
    if compute_capability is not None:  # a pinned product: nodes whose GPU has this capability
        major, _, minor = compute_capability.partition(".")
        selector |= {GPU_COMPUTE_MAJOR_LABEL: major, GPU_COMPUTE_MINOR_LABEL: minor}
    return {
        "nodeSelector": selector,
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }


def place(
    pod_spec: dict[str, Any], node_selector: Mapping[str, str], tolerations: list[Toleration]
) -> None:
    """Add the spec's node selector and tolerations to the pod's own (the GPU placement's);
    nothing is added when they are empty, so such pod specs read as before the fields existed."""
    if node_selector:
        pod_spec["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), **node_selector}
    if tolerations:
        merged: list[dict[str, Any]] = list(pod_spec.get("tolerations", []))
        # A repeat of the GPU toleration (or of another entry) is listed once.
        merged += [t for t in (tol.pod_json() for tol in tolerations) if t not in merged]
        pod_spec["tolerations"] = merged


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def serving_selector(engine: Engine) -> dict[str, str]:
    return {"trtops.dev/engine": engine.name, "trtops.dev/component": "serve"}
