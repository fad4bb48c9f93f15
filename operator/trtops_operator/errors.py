"""The operator's exceptions; each says whether retrying can help::

    OperatorError
    +-- TemporaryError           retry after ``delay`` seconds: nothing a user must do
    |   +-- ApiUnavailable       the API server failed or could not be reached
    |   +-- RouterUnavailable    (canary.errors) other writers kept winning the route object
    +-- PermanentError           a user must act; the message says what to fix
        +-- ApiRefused           the API server refused an object (400, 403, 422)
        |   +-- NameConflict     an object of that name exists and is someone else's
        |   +-- ClaimNotAllowed  a claim the pods would mount has not opted in
        +-- RouterMisconfigured  (canary.errors) the route object is missing or foreign

Pure modules raise these; only ``handlers`` turns them into kopf's errors, at the edge.
"""

from __future__ import annotations

__all__ = [
    "ApiRefused",
    "ApiUnavailable",
    "ClaimNotAllowed",
    "NameConflict",
    "OperatorError",
    "PermanentError",
    "TemporaryError",
]


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""


class TemporaryError(OperatorError):
    """Retrying later can help; ``delay`` is the suggested wait in seconds."""

    def __init__(self, message: str, *, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(OperatorError):
    """Retrying alone will not help: a person must change something (the message says what)."""


class ApiUnavailable(TemporaryError):
    """The API server answered with an error that may pass, or could not be reached."""


class ApiRefused(PermanentError):
    """The API server refused a request as invalid or forbidden."""

    reason = "ApplyRefused"  # of the Degraded condition and the Warning that report it


class NameConflict(ApiRefused):
    """An object the engine needs exists already and is not controlled by the engine: it is
    left as it is, and the engine reports ``NameConflict`` until it is renamed or the object
    goes (never taken over: that let a TrtEngine capture, then garbage-collect, a Service)."""

    reason = "NameConflict"

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(
            f"{kind} {namespace}/{name} already exists and is not controlled by this TrtEngine;"
            f" it is left untouched: delete or rename that {kind}, or rename the TrtEngine"
        )
        self.kind, self.namespace, self.name = kind, namespace, name


class ClaimNotAllowed(ApiRefused):
    """A PersistentVolumeClaim the spec names has not opted in to being mounted by TrtEngine
    pods (label ``trtops.dev/mountable: "true"``): a spec may otherwise mount, read and (the
    storage claim) write any claim of its namespace through the operator."""

    reason = "ClaimNotAllowed"
