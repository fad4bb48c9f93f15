"""Every error the serving path raises on purpose, and what each transport answers for it.

::

    ServeError                      (500 / INTERNAL)
    ├── InvalidInput                (400 / INVALID_ARGUMENT)  the client's request is wrong
    │   └── PayloadTooLarge         (413 / INVALID_ARGUMENT)  body above --max-body-bytes
    ├── ModelNotFound               (404 / NOT_FOUND)         unknown model name or version
    ├── Overloaded                  (503 / RESOURCE_EXHAUSTED) queue full: rejected at once
    ├── NotReady                    (503 / UNAVAILABLE)       loading, or shutting down
    ├── RequestTimeout              (504 / DEADLINE_EXCEEDED) queued or computing too long
    └── BackendError                (500 / INTERNAL)          the model failed to run
        └── DeviceError             (500 / INTERNAL)          the GPU failed: triggers CPU fallback

Transports map the class to a status and put ``str(error)`` in the body, so messages are written
for the person who sent the request.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "DeviceError",
    "InvalidInput",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServeError",
]


class ServeError(Exception):
    """Base class; ``http_status`` and ``outcome`` drive the transports and the metrics."""

    http_status = 500
    grpc_code = "INTERNAL"
    outcome = "server_error"


class InvalidInput(ServeError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    outcome = "client_error"


class PayloadTooLarge(InvalidInput):
    http_status = 413


class ModelNotFound(ServeError):
    http_status = 404
    grpc_code = "NOT_FOUND"
    outcome = "client_error"


class Overloaded(ServeError):
    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"
    outcome = "rejected"


class NotReady(ServeError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    outcome = "rejected"


class RequestTimeout(ServeError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    outcome = "server_error"


class BackendError(ServeError):
    """The backend raised while running a batch that passed validation."""


class DeviceError(BackendError):
    """The accelerator itself failed (CUDA error): the server may fall back to the CPU."""
