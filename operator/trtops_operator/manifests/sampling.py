"""What request sampling adds to the serving pods and to the build Jobs (docs/experiments.md,
"Request sampling").

Least privilege: the serving pods mount the storage claim read-only, as without sampling; with
``spec.serving.sampling.enabled`` they also mount the claim's ``samples/<engine>`` folder alone
(a ``subPath``), writable, at :data:`SAMPLES_MOUNT`. Nothing else on the claim (plans, other
engines' samples) becomes writable. A build reads the sample from its own read-write mount of the
claim (``/plans/samples/<engine>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trtops_worker.sample_layout import engine_dir

from trtops_operator.manifests.common import PLANS_MOUNT, Engine

__all__ = ["SAMPLES_MOUNT", "SampleMount", "build_sample_args", "serve_sample_mount"]

SAMPLES_MOUNT = "/samples"
POD_NAME_ENV = "TRTOPS_POD_NAME"  # the sample file's name: one file per pod


@dataclass(frozen=True)
class SampleMount:
    """The serving container's flags, volume, mount and environment for sampling."""

    args: list[str]
    volume: dict[str, Any]
    mount: dict[str, Any]
    env: dict[str, Any]


def serve_sample_mount(engine: Engine) -> SampleMount | None:
    """What a serving pod needs to sample requests; None when sampling is off."""
    sampling = engine.spec.serving.sampling
    if sampling is None or not sampling.enabled:
        return None
    args = ["--sample-dir", SAMPLES_MOUNT, "--sample-max-bytes", str(sampling.max_bytes)]
    args += ["--sample-window-seconds", str(sampling.window_seconds)]
    return SampleMount(
        args=args,
        volume={
            "name": "samples",
            "persistentVolumeClaim": {"claimName": engine.spec.storage.claim_name},
        },
        mount={"name": "samples", "mountPath": SAMPLES_MOUNT, "subPath": engine_dir(engine.name)},
        env={"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    )


def build_sample_args(engine: Engine, *, calibrate: bool) -> list[str]:
    """The build's flags for the data whose ``source`` is ``sample``; ``calibrate``: whether
    the build calibrates (int8, fp8)."""
    build = engine.spec.build
    folder = f"{PLANS_MOUNT}/{engine_dir(engine.name)}"
    args: list[str] = []
    if calibrate and build.calibration is not None and build.calibration.source == "sample":
        args += ["--calibration-sample", folder]
        args += ["--calibration-min-sample-rows", str(build.calibration.min_sample_rows)]
    validation = build.accuracy.validation if build.accuracy is not None else None
    if validation is not None and validation.source == "sample":
        args += ["--validation-sample", folder]
        args += ["--validation-min-sample-rows", str(validation.min_sample_rows)]
    return args
