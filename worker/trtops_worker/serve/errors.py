"""Every error the serving path raises on purpose, and what each transport answers for it.

::

    ServeError                      (500 / INTERNAL)
    ├── InvalidInput                (400 / INVALID_ARGUMENT)  the client's request is wrong
    │   ├── PayloadTooLarge         (413 / INVALID_ARGUMENT)  body above the body limit
    │   ├── BodyTimeout             (408 / INVALID_ARGUMENT)  body not received in time
    │   ├── InputRejected           (400 / INVALID_ARGUMENT)  the model refused the values
    │   └── Unsupported             (400 / UNIMPLEMENTED)     a Triton feature not implemented
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
    "BodyTimeout",
    "DeviceError",
    "InputRejected",
    "InvalidInput",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServeError",
    "Unsupported",
    "from_onnxruntime",
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


class BodyTimeout(InvalidInput):
    """The client did not send its whole body within the body-read deadline."""

    http_status = 408


class InputRejected(InvalidInput):
    """The model ran and refused the request's values (an id outside an embedding table)."""


class Unsupported(InvalidInput):
    """A parameter asks for a Triton feature this server does not implement."""

    grpc_code = "UNIMPLEMENTED"


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


# ONNX Runtime's status codes (``onnxruntime_c_api.h`` OrtErrorCode, the Python exception class
# is named after each) that only a request's values can cause: the session loaded and ran
# other inputs, so these are the client's.
_ORT_VALUE_ERRORS = frozenset({"InvalidArgument"})
# Kernels that parse strings (Cast from string) fail with RUNTIME_EXCEPTION carrying the C++
# parser's name (std::stoll ...): the text was not a number.
_ORT_PARSE_MARKERS = ("Status Message: sto",)


def from_onnxruntime(error: Exception) -> ServeError:
    """The one place ONNX Runtime's run errors are classified: the request's values (400 /
    INVALID_ARGUMENT, ``client_error``) or a server fault (500, ``server_error``)."""
    message = str(error)
    kind = type(error).__name__
    if kind in _ORT_VALUE_ERRORS or (
        kind == "RuntimeException" and any(m in message for m in _ORT_PARSE_MARKERS)
    ):
        return InputRejected(f"the model refused the input values: {message}")
    return BackendError(f"ONNX Runtime failed: {message}")
