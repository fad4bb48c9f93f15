"""What the operator and the worker agree on, in one place both import.

The worker writes these (pod labels it reads back, the build result in its termination message,
the metrics it serves); the operator reads them (watch selectors, ``status.plans``, Prometheus
queries). A name written out twice drifts; a name imported from here cannot. Pure: no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ANNOTATION_KEY",
    "ANNOTATION_SPEC_HASH",
    "BUILD_CONTAINER",
    "COMPONENT_BUILD",
    "COMPONENT_SERVE",
    "EXIT_CODES",
    "FETCH_CONTAINER",
    "LABEL_COMPONENT",
    "LABEL_ENGINE",
    "LABEL_KEY",
    "LABEL_PREFIX",
    "LABEL_REVISION",
    "LABEL_TARGET",
    "MANAGED_BY",
    "METRIC_INFLIGHT",
    "METRIC_LABELS",
    "METRIC_QUEUE_DEPTH",
    "METRIC_REQUESTS",
    "METRIC_REQUEST_DURATION",
    "PERMANENT_CATEGORIES",
    "PERMANENT_EXIT_CODES",
    "SERVE_CONTAINER",
    "BuildFailureResult",
    "BuildSuccessResult",
    "PlanIncompatibleResult",
]

# --- labels and annotations on the objects the operator owns ----------------------------------
LABEL_PREFIX = "trtops.dev/"
LABEL_ENGINE = "trtops.dev/engine"  # the TrtEngine's name
LABEL_COMPONENT = "trtops.dev/component"  # COMPONENT_BUILD | COMPONENT_SERVE
LABEL_TARGET = "trtops.dev/target"  # the GPU product, or "cpu"
LABEL_REVISION = "trtops.dev/revision"  # the revision a serving pod runs
LABEL_KEY = "trtops.dev/key"  # the build key (first 63 characters)
ANNOTATION_SPEC_HASH = "trtops.dev/spec-hash"  # hash of what the operator applied
ANNOTATION_KEY = "trtops.dev/key"  # the full build key
COMPONENT_BUILD = "build"
COMPONENT_SERVE = "serve"
MANAGED_BY = {"app.kubernetes.io/managed-by": "trtops"}
BUILD_CONTAINER = "build"  # the container whose termination message holds the result
FETCH_CONTAINER = "fetch"  # the init container copying remote inputs; a message only on failure
SERVE_CONTAINER = "serve"  # the serving container; a termination message when it cannot start

# --- the serving metrics the canary analysis queries ------------------------------------------
METRIC_REQUEST_DURATION = "trtops_request_duration_seconds"  # histogram, seconds
METRIC_REQUESTS = "trtops_requests_total"  # counter, by ``outcome``
METRIC_LABELS = ("model", "revision", "precision", "backend")
# gauges per pod that spec.serving.autoscaling scales on (through a custom-metrics adapter)
METRIC_INFLIGHT = "trtops_inflight_requests"  # requests received and not yet answered
METRIC_QUEUE_DEPTH = "trtops_queue_depth"  # rows waiting for a batch

# --- the build's exit codes (``trtops_worker.builder.errors``) ----------------------------------
# category -> process exit code; anything unexpected exits 1 (category "internal").
EXIT_CODES = {
    "model": 10,
    "calibration": 11,
    "config": 12,
    "storage": 13,
    "accuracy": 14,
    "backend": 15,
    "build": 16,
    "fetch": 17,  # the fetch init container: the object store did not answer
}
# The inputs must change before a retry can succeed: the build Job never retries these.
PERMANENT_CATEGORIES = ("model", "calibration", "config", "accuracy")
PERMANENT_EXIT_CODES = tuple(EXIT_CODES[c] for c in PERMANENT_CATEGORIES)


# --- the build result: one compact JSON object in the termination message ---------------------
class _Result(BaseModel):
    # Unknown fields are kept (a newer worker may add some) but never required.
    model_config = ConfigDict(extra="allow", frozen=True)


class BuildSuccessResult(_Result):
    """``{"ok": true, ...}``: where the artifact is and what it measured. Field names are the
    ``status.plans`` names (camelCase); ``path`` is absolute on the storage claim."""

    ok: Literal[True]
    key: str  # the worker's content address of the artifact
    path: Annotated[str, Field(pattern=r"^/")]
    artifact: str | None = None
    sha256: str | None = None
    precision: str | None = None
    backend: str | None = None
    cached: bool | None = None
    build_seconds: float | None = Field(default=None, alias="buildSeconds")
    versions: dict[str, Any] | None = None
    device: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    benchmark: dict[str, Any] | None = None
    truncated: bool | None = None


class BuildFailureResult(_Result):
    """``{"ok": false, "category", "reason", "message"}``: whose problem it is (``EXIT_CODES``'
    categories), a CamelCase reason and a message for people."""

    ok: Literal[False]
    category: str = "internal"
    reason: str = ""
    message: str = ""


# --- the serving pod's refusal of a plan: its termination message ------------------------------
class PlanIncompatibleResult(_Result):
    """``{"ok": false, "reason": "PlanIncompatible", ...}``: the serving pod refused a plan built
    for another TensorRT release or compute capability (``serve/backend_tensorrt.py``). ``plan``
    and ``pod``: ``{"tensorrtVersion", "computeCapability", "gpu"}``."""

    ok: Literal[False]
    category: str = "plan"
    reason: Literal["PlanIncompatible"]
    message: str = ""
    plan: dict[str, str] = {}
    pod: dict[str, str] = {}
