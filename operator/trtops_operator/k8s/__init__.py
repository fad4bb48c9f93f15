"""The one package that writes to the Kubernetes API (reads come from kopf's watch indexes),
router objects included, with one error map.

Every call is idempotent: Jobs are created if absent (409 means someone else already did,
which is the point of deterministic names), owned objects are server-side applied with one
field manager, deletes ignore 404. Errors follow :mod:`trtops_operator.errors`: a request the
API server refuses as malformed or forbidden (400, 403, 422) is ``ApiRefused`` (permanent);
any other API error or an unreachable server is ``ApiUnavailable`` (temporary). No kopf here.

Modules: ``error_map`` (the one error map), ``api`` (the operator's own objects, status,
finalizers, Events; ``apply_decision``), ``routes`` (weights on the user's HTTPRoute or
VirtualService, guarded by the resourceVersion read).
"""

from trtops_operator.k8s.api import CLAIM_OPT_IN, Api, apply_decision
from trtops_operator.k8s.routes import HTTPROUTE, ROUTE_OPT_IN, VIRTUALSERVICE, RouteRef, RouterIO

__all__ = [
    "CLAIM_OPT_IN",
    "HTTPROUTE",
    "ROUTE_OPT_IN",
    "VIRTUALSERVICE",
    "Api",
    "RouteRef",
    "RouterIO",
    "apply_decision",
]
