"""``trtops-worker fetch``: the build Job's init container, copying remote inputs onto the claim.

One module for every object store, all through fsspec: ``s3://`` (s3fs), ``gs://`` (gcsfs),
``https://`` (fsspec's HTTP filesystem, aiohttp) and ``hf://`` (``huggingface_hub``'s
``HfFileSystem``). Credentials come from the environment each library already reads, filled from
the Secret named in the spec: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``
(plus ``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` for S3-compatible stores),
``GOOGLE_APPLICATION_CREDENTIALS`` (gcsfs), ``HF_TOKEN`` (and ``HF_ENDPOINT``).

Every file is written to a temporary name next to its destination, hashed, and renamed into
place only when complete and matching its pin: a failed fetch leaves nothing behind that a build
could read. Failures end the process with the build's result format in the
termination log, one reason each::

    <Role>NotFound         the object (or bucket, repository) does not exist        permanent
    <Role>AccessDenied     credentials missing, wrong or not allowed to read it     permanent
    <Role>DigestMismatch   the bytes do not match the sha256 pin                    permanent
    <Role>Unreachable      the store did not answer (network, 5xx, timeout)         transient

``<Role>`` is ``Model``, ``Calibration`` or ``Validation``; the category is the role's own
(``model``, ``calibration``, ``config``), or ``fetch`` for Unreachable. Messages name the URI
without its query string and never contain a credential: values of credential-like environment
variables are masked in any text the process writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtops_worker.builder.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    FetchError,
    ModelError,
)
from trtops_worker.builder.model import sha256_file
from trtops_worker.builder.result import compact, failure, write_termination_log
from trtops_worker.sources import is_remote, redact

__all__ = ["ROLES", "Get", "add_arguments", "fetch", "run"]

log = logging.getLogger("trtops_worker.fetch")

CHUNK = 8 << 20
ROLES: dict[str, type[BuildError]] = {
    "model": ModelError,
    "calibration": CalibrationError,
    "validation": ConfigError,
}
# Names of environment variables whose values must never appear in output.
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH)", re.IGNORECASE)
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
    "401",
}


_DENIED_ERRORS = {"GatedRepoError", "NoCredentialsError", "DefaultCredentialsError", "RefreshError"}


@dataclass(frozen=True)
class Get:
    """One file to fetch: ``uri`` to ``dest``, checked against ``sha256`` when given."""

    role: str
    uri: str
    dest: Path
    sha256: str | None = None


def _mask(text: str) -> str:
    """``text`` with the value of every credential-like environment variable replaced."""
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def _download(uri: str, to: Path) -> None:
    """Stream ``uri`` into the local file ``to`` with one GET (s3fs splits a large object into
    concurrent ranged GETs); no listing, so a missing object is a plain not-found."""
    import fsspec

    scheme, _, rest = uri.partition("://")
    protocol = {"s3": "s3", "gs": "gcs", "hf": "hf", "https": "https"}[scheme]
    # No instance cache: credentials are read from the environment each time, as in the pod.
    fs = fsspec.filesystem(protocol, skip_instance_cache=True)
    if scheme == "https":
        # A context made now (aiohttp's default one is made at import) verifies against the
        # system CAs or SSL_CERT_FILE, as set in the container.
        fs.get_file(uri, str(to), ssl=ssl.create_default_context())
    else:
        fs.get_file(rest, str(to))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _kind(exc: BaseException) -> str:
    """NotFound, AccessDenied or Unreachable, from whatever the store's library raised."""
    for e in _chain(exc):
        if isinstance(e, FileNotFoundError):
            return "NotFound"
        if isinstance(e, PermissionError):
            return "AccessDenied"
        # botocore ClientError: response["Error"]["Code"]
        code = str((getattr(e, "response", None) or {}).get("Error", {}).get("Code", ""))
        # aiohttp ClientResponseError (.status), gcsfs HttpError (.code), huggingface_hub
        # HfHubHTTPError (.response.status_code)
        status = getattr(e, "status", None) or getattr(e, "code", None)
        if status is None:
            status = getattr(getattr(e, "response", None), "status_code", None)
        code = code or str(status or "")
        if code in _NOT_FOUND_CODES or code == "410":
            return "NotFound"
        if code in _DENIED_CODES:
            return "AccessDenied"
        name = type(e).__name__
        if name in ("RepositoryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"):
            return "NotFound"
        if name in (
            "GatedRepoError",
            "NoCredentialsError",
            "DefaultCredentialsError",
            "RefreshError",
        ):
            return "AccessDenied"
    return "Unreachable"


def _error(get: Get, kind: str, detail: str) -> BuildError:
    cls: type[BuildError] = FetchError if kind == "Unreachable" else ROLES[get.role]
    reason = get.role.capitalize() + kind
    return cls(reason, _mask(f"{get.role} {redact(get.uri)}: {detail}"))


def fetch(get: Get) -> dict[str, Any]:
    """Copy ``get.uri`` to ``get.dest``; returns ``{"role", "uri", "path", "sha256", "bytes",
    "cached", "seconds"}`` (uri redacted). Raises :class:`BuildError` with the reasons above.

    A pinned destination that already holds the pinned bytes is not fetched again.
    """
    if get.role not in ROLES:
        raise ConfigError("InvalidArgument", f"unknown fetch role {get.role!r}")
    if not is_remote(get.uri):
        raise ConfigError("InvalidArgument", f"{get.role} {redact(get.uri)} is not a remote URI")
    pin = get.sha256.lower() if get.sha256 else None
    started = time.monotonic()
    if pin and get.dest.is_file() and sha256_file(get.dest) == pin:
        return _report(get, pin, get.dest.stat().st_size, cached=True, started=started)
    try:
        get.dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage_error(get, exc) from exc
    part = get.dest.with_name(f".{get.dest.name}.{os.getpid()}.part")
    try:
        try:
            _download(get.uri, part)
        except OSError as exc:
            if exc.filename == str(part) or isinstance(exc, IsADirectoryError):
                raise _storage_error(get, exc) from exc
            raise _error(get, _kind(exc), _describe(exc)) from exc
        except Exception as exc:  # each store's library has its own errors; classify them
            raise _error(get, _kind(exc), _describe(exc)) from exc
        got, size = sha256_file(part), part.stat().st_size
        if pin and got != pin:
            raise _error(get, "DigestMismatch", f"has sha256 {got}, the pin says {pin}")
        os.replace(part, get.dest)
    finally:
        part.unlink(missing_ok=True)
    return _report(get, got, size, cached=False, started=started)


def _storage_error(get: Get, exc: OSError) -> BuildError:
    from trtops_worker.builder.errors import StorageError

    return StorageError("StorageUnwritable", f"cannot write {get.dest}: {exc.strerror or exc}")


def _describe(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _report(get: Get, sha: str, size: int, *, cached: bool, started: float) -> dict[str, Any]:
    return {
        "role": get.role,
        "uri": redact(get.uri),
        "path": str(get.dest),
        "sha256": sha,
        "bytes": size,
        "cached": cached,
        "seconds": round(time.monotonic() - started, 3),
    }


# --- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--get",
        nargs=4,
        action="append",
        required=True,
        metavar=("ROLE", "URI", "DEST", "SHA256"),
        help="fetch URI to DEST (SHA256: the pin, or - for none); ROLE: model, calibration, "
        "validation (repeatable)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(os.environ.get("TRTOPS_TERMINATION_LOG", "/dev/termination-log")),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The stores' libraries log request details (headers included) at DEBUG; keep them quiet.
    for noisy in ("botocore", "aiobotocore", "s3fs", "gcsfs", "fsspec", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        for role, uri, dest, pin in args.get:
            done = fetch(Get(role, uri, Path(dest), None if pin == "-" else pin))
            log.info(
                "%s %s -> %s (%d bytes, sha256 %s%s, %.1f s)",
                role,
                done["uri"],
                done["path"],
                done["bytes"],
                done["sha256"],
                ", already there" if done["cached"] else "",
                done["seconds"],
            )
    except BuildError as exc:
        log.error("%s (%s): %s", exc.reason, exc.category, exc.message)
        write_termination_log(
            args.termination_log, compact(failure(exc.category, exc.reason, exc.message))
        )
        return exc.exit_code
    except Exception as exc:  # no traceback: a library's frames may hold credential values
        message = _mask(_describe(exc))
        log.error("InternalError: %s", message)
        write_termination_log(
            args.termination_log, compact(failure("internal", "InternalError", message))
        )
        return 1
    return 0
