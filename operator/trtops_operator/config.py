"""Operator settings: command-line flags land here through the environment, because kopf loads
the handlers module by name and the module reads its settings once at startup."""

from __future__ import annotations

import os
from dataclasses import dataclass

from trtops_operator import __version__

__all__ = ["DEFAULT_WORKER_IMAGE", "OperatorConfig"]

DEFAULT_WORKER_IMAGE = f"ghcr.io/trtops/trtops-worker:{__version__}"


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs besides the resources themselves."""

    worker_image: str = DEFAULT_WORKER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 0  # 0: no metrics server
    metrics_address: str = "0.0.0.0"  # noqa: S104 - scraped from other pods
    job_ttl_seconds: int = 86400  # finished build Jobs (and their results) are kept this long
    resync_seconds: float = 300.0  # every engine is re-checked this often even without events
    # Engines the work queue (watch wake-ups, resync) reconciles at once. A reconcile mostly
    # waits on its API writes, so this matches the API threads: with 4, 500 engines' build
    # results and rollouts queued behind each other.
    workers: int = 16
    # API writes run in threads (the kubernetes client blocks); this many at once, each with its
    # own pooled connection, so build results and readiness do not queue behind every creation.
    api_threads: int = 16

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        return cls(
            worker_image=e.get("TRTOPS_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
            image_pull_policy=e.get("TRTOPS_IMAGE_PULL_POLICY", "IfNotPresent"),
            metrics_port=int(e.get("TRTOPS_METRICS_PORT", "0")),
            metrics_address=e.get("TRTOPS_METRICS_ADDRESS", "0.0.0.0"),  # noqa: S104 - as above
            job_ttl_seconds=int(e.get("TRTOPS_JOB_TTL_SECONDS", "86400")),
            resync_seconds=float(e.get("TRTOPS_RESYNC_SECONDS", "300")),
            workers=int(e.get("TRTOPS_WORKERS", "16")),
            api_threads=max(1, int(e.get("TRTOPS_API_THREADS", "16"))),
        )
