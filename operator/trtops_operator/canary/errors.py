"""Errors of the canary package; each says whether retrying can help.

    CanaryError
    +-- RouterError
        +-- RouterUnavailable    API trouble or lost races past the retry budget: retry later
        +-- RouterMisconfigured  the route object is missing or never references our Services:
                                 a user must fix it, retrying alone will not

Router errors are also the operator's ``TemporaryError``/``PermanentError``
(:mod:`trtops_operator.errors`), so callers outside the package need only those two.

Prometheus trouble is not an exception the reconciler sees: it becomes an ``Inconclusive``
verdict (:mod:`trtops_operator.canary.runner`), which holds the rollout where it is.
"""

from __future__ import annotations

from trtops_operator.errors import PermanentError, TemporaryError

__all__ = ["CanaryError", "RouterError", "RouterMisconfigured", "RouterUnavailable"]


class CanaryError(Exception):
    """Base of every error raised by ``trtops_operator.canary``."""


class RouterError(CanaryError):
    """Setting weights on the traffic router failed."""


class RouterUnavailable(RouterError, TemporaryError):
    """Temporary: the API server failed or other writers kept winning; retry later."""


class RouterMisconfigured(RouterError, PermanentError):
    """Permanent until a user acts: the object is absent or has nothing this operator owns."""
