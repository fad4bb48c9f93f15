"""Where a remote model, calibration or validation file lands on the storage claim.

Pure string work shared by the operator (which writes the build's command line) and the worker's
``fetch`` init container (which writes the file), so both name the same path. No object-store
library is imported here: the operator image has none.

URIs (the CRD's pattern admits exactly these):

- ``s3://BUCKET/KEY``, ``gs://BUCKET/OBJECT``: credentials from the environment (the Secret named
  in ``spec.model.credentialsSecret``);
- ``https://HOST/PATH``: needs a sha256 pin (the CRD refuses it without one);
- ``hf://ORG/REPO[@REVISION]/PATH`` (``hf://datasets/ORG/REPO/PATH`` for a dataset): the Hugging
  Face Hub, through ``huggingface_hub``'s fsspec filesystem.

A pinned file lands at ``sources/sha256/<pin>/<name>`` (the same bytes from any URI are fetched
once); an unpinned one at ``sources/uri/<hash of the URI>/<name>``, fetched again by every build
because the object behind a URI may change.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["REMOTE_SCHEMES", "SOURCES_DIR", "is_remote", "local_path", "redact"]

REMOTE_SCHEMES = ("s3", "gs", "https", "hf")
SOURCES_DIR = "sources"
_NAME_MAX = 100


def is_remote(uri: str) -> bool:
    """True for the URIs the ``fetch`` init container downloads."""
    return uri.split("://", 1)[0] in REMOTE_SCHEMES and "://" in uri


def redact(uri: str) -> str:
    """The URI as logs and status may show it: no query string or fragment (a pre-signed URL
    carries its signature there)."""
    cut = min((i for i in (uri.find("?"), uri.find("#")) if i >= 0), default=-1)
    return uri if cut < 0 else uri[:cut] + "?..."


def _name(uri: str) -> str:
    """The file name part, kept so loaders can tell ``.npz`` from ``.npy`` from ``.onnx``."""
    path = re.split(r"[?#]", uri.split("://", 1)[-1], maxsplit=1)[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.rstrip("/").rsplit("/", 1)[-1]).lstrip(".")
    return name[-_NAME_MAX:] or "object"


def local_path(uri: str, sha256: str | None) -> str:
    """The path, relative to the storage root, that ``uri`` is fetched to."""
    if sha256:
        return f"{SOURCES_DIR}/sha256/{sha256.lower()}/{_name(uri)}"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:32]
    return f"{SOURCES_DIR}/uri/{digest}/{_name(uri)}"
