"""Why a build failed, in words the operator can act on.

Every failure is a :class:`BuildError` carrying a CamelCase ``reason`` (what went wrong) and a
``category`` (whose problem it is), and each category has its own process exit code, so the
operator can decide from the pod status alone whether retrying could help::

    BuildError              category     exit  reasons
     +-- ModelError         model          10  InvalidModel, ModelNotFound, ModelDigestMismatch
     +-- CalibrationError   calibration    11  CalibrationRequired, CalibrationMismatch,
     |                                         CalibrationNotFound, CalibrationUnreadable,
     |                                         CalibrationMethodUnsupported
     +-- ConfigError        config         12  InvalidProfile, InvalidArgument, ValidationMismatch,
     |                                         ValidationNotFound, ValidationUnreadable
     +-- StorageError       storage        13  StorageFull (no space), StorageUnwritable
     +-- AccuracyError      accuracy       14  AccuracyGateFailed
     +-- BackendError       backend        15  BackendUnavailable
     +-- EngineError        build          16  BuildFailed, PrecisionConversionFailed
     +-- FetchError         fetch          17  ModelUnreachable, CalibrationUnreachable,
                                               ValidationUnreachable
    (anything unexpected)   internal        1  InternalError
    (SIGTERM)               internal      143  Terminated (its temporary folder removed)

Categories model/calibration/config/accuracy are permanent (the inputs must change); storage,
backend, build and fetch may be transient (a full volume, a node without the right image, an OOM,
an object store that did not answer). The ``fetch`` init container (``trtops_worker.fetch``)
reports a missing object, refused credentials and a wrong pin in the category of what it fetched:
``ModelNotFound``, ``ModelAccessDenied``, ``ModelDigestMismatch`` (``Calibration...``,
``Validation...`` likewise).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EXIT_CODES",
    "AccuracyError",
    "BackendError",
    "BuildError",
    "CalibrationError",
    "ConfigError",
    "EngineError",
    "FetchError",
    "ModelError",
    "StorageError",
]


class BuildError(Exception):
    """A build failure with a machine-readable reason and a message for people."""

    category: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ModelError(BuildError):
    category = "model"
    exit_code = 10


class CalibrationError(BuildError):
    category = "calibration"
    exit_code = 11


class ConfigError(BuildError):
    category = "config"
    exit_code = 12


class StorageError(BuildError):
    category = "storage"
    exit_code = 13


class AccuracyError(BuildError):
    category = "accuracy"
    exit_code = 14


class BackendError(BuildError):
    category = "backend"
    exit_code = 15


class EngineError(BuildError):
    category = "build"
    exit_code = 16


class FetchError(BuildError):
    category = "fetch"
    exit_code = 17


EXIT_CODES: dict[str, int] = {
    cls.category: cls.exit_code
    for cls in (
        BuildError,
        ModelError,
        CalibrationError,
        ConfigError,
        StorageError,
        AccuracyError,
        BackendError,
        EngineError,
        FetchError,
    )
}
