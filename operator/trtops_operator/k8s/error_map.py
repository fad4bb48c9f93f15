"""The one error map of the operator's Kubernetes writes: an API error or an unreachable server
becomes one of :mod:`trtops_operator.errors`. A request the API server refuses as malformed or
forbidden (400, 403, 422) is permanent (``ApiRefused`` by default); anything else is temporary
(``ApiUnavailable`` by default)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trtops_operator.errors import ApiRefused, ApiUnavailable, PermanentError, TemporaryError

__all__ = ["FIELD_MANAGER", "JsonPatch", "api_errors", "status_code"]

FIELD_MANAGER = "trtops-operator"
REFUSED = (400, 403, 422)
JsonPatch = list[dict[str, Any]]


@contextmanager
def api_errors(
    what: str,
    *,
    ignore: Collection[int] = (),
    temporary: type[TemporaryError] = ApiUnavailable,
    permanent: type[PermanentError] = ApiRefused,
) -> Iterator[None]:
    """The one error map: API errors -> the operator's exceptions; ``ignore``: statuses that
    mean the work is done already (404 on delete, 409 on create)."""
    try:
        yield
    except ApiException as exc:
        if exc.status in ignore:
            return
        if exc.status in REFUSED:
            raise permanent(
                f"{what}: the API server refused it ({exc.status}): {exc.body}"
            ) from exc
        raise temporary(f"{what}: API error {exc.status} {exc.reason}") from exc
    except (HTTPError, OSError) as exc:
        raise temporary(f"{what}: API unreachable: {exc}") from exc


def status_code(exc: ApiException) -> int:
    return int(exc.status or 0)
