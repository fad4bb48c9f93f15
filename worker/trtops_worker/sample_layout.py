"""Where request samples live on the storage claim: shared by the serving worker (which writes
them), the build (which reads them) and the operator (which mounts and names them).

Pure string work, no I/O. Layout, relative to the storage claim's root::

    samples/<engine>/<revision>/<writer>.npz

``<writer>`` is one serving process: the pod's name and its front end's index. Each file is one
``.npz`` with one array per model input, axis 0 the sample axis: the format of calibration and
validation data (``trtops_worker.builder.data``), so a build reads a sample as it reads any
calibration file. A serving pod mounts ``samples/<engine>`` only, and writable only when
``spec.serving.sampling.enabled`` (docs/experiments.md, "Request sampling").
"""

from __future__ import annotations

import re

__all__ = [
    "SAMPLES_DIR",
    "SAMPLE_SOURCE",
    "SAMPLE_SUFFIX",
    "engine_dir",
    "writer_name",
]

SAMPLES_DIR = "samples"
SAMPLE_SUFFIX = ".npz"
SAMPLE_SOURCE = "sample"  # the CRD's ``source: sample`` (calibration, validation)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def engine_dir(engine: str) -> str:
    """``samples/<engine>``, relative to the storage claim's root (``engine``: an object name)."""
    return f"{SAMPLES_DIR}/{engine}"


def writer_name(pod: str, front_end: str | None) -> str:
    """The file name (no suffix) of one serving process's sample: ``<pod>[-fe<index>]``."""
    name = _SAFE.sub("_", pod).strip("._") or "pod"
    return f"{name}-fe{front_end}" if front_end is not None else name
