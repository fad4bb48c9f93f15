"""Route objects (HTTPRoute, VirtualService) belong to the user: each write is a JSON patch of
the weights this operator owns (computed by :mod:`trtops_operator.canary.routers` from the
object just read), headed by ``{"op": "replace", "path": "/metadata/resourceVersion", ...}``: a
resourceVersion in a patched object is a precondition, so if anyone (Argo CD, a person) changed
the object between our read and our write, the API server refuses it with 409 and we read again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from trtops_operator.canary import routers
from trtops_operator.canary.errors import RouterMisconfigured, RouterUnavailable
from trtops_operator.k8s.error_map import JsonPatch, api_errors, status_code

__all__ = ["HTTPROUTE", "ROUTE_OPT_IN", "VIRTUALSERVICE", "RouteRef", "RouterIO"]

log = logging.getLogger(__name__)


class RouteRef:
    """Group, version and plural of a route kind."""

    def __init__(self, kind: str, group: str, version: str, plural: str) -> None:
        self.kind, self.group, self.version, self.plural = kind, group, version, plural


HTTPROUTE = RouteRef("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes")
VIRTUALSERVICE = RouteRef("VirtualService", "networking.istio.io", "v1", "virtualservices")


# A route object opts in to having its weights moved by naming the engines that may move them
# (comma-separated) in this annotation: naming a route in a spec is not enough, since whoever
# may create a TrtEngine need not be whoever owns the route.
ROUTE_OPT_IN = "trtops.dev/engine"


def _check_opt_in(ref: RouteRef, obj: Mapping[str, Any], engine: str) -> None:
    meta = obj.get("metadata") or {}
    named = str((meta.get("annotations") or {}).get(ROUTE_OPT_IN, ""))
    if engine not in {n.strip() for n in named.split(",")}:
        raise RouterMisconfigured(
            f"{ref.kind} {meta.get('namespace')}/{meta.get('name')} has not opted in to this"
            f" engine moving its weights: annotate it {ROUTE_OPT_IN}={engine}"
            " (comma-separate several engines)"
        )


class RouterIO:
    """Sets weights on HTTPRoutes and VirtualServices; ``attempts`` bounds the re-read loop.
    Raises ``RouterMisconfigured`` (permanent) or ``RouterUnavailable`` (temporary)."""

    def __init__(self, api_client: client.ApiClient, *, attempts: int = 5) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.attempts = attempts

    def get(self, ref: RouteRef, namespace: str, name: str) -> dict[str, Any]:
        what = f"{ref.kind} {namespace}/{name} (spec.rollout.trafficRouter)"
        try:
            with api_errors(
                f"read {what}", temporary=RouterUnavailable, permanent=RouterMisconfigured
            ):
                obj = self.custom.get_namespaced_custom_object(
                    ref.group, ref.version, namespace, ref.plural, name
                )
        except RouterUnavailable as exc:
            if isinstance(exc.__cause__, ApiException) and status_code(exc.__cause__) == 404:
                raise RouterMisconfigured(f"{what} does not exist") from exc
            raise
        if not isinstance(obj, dict):
            raise RouterUnavailable(f"read {ref.kind} {name}: unexpected answer {obj!r:.200}")
        return obj

    def _converge(
        self,
        ref: RouteRef,
        namespace: str,
        name: str,
        engine: str,
        compute: Callable[[Mapping[str, Any]], JsonPatch],
    ) -> bool:
        for attempt in range(1, self.attempts + 1):
            obj = self.get(ref, namespace, name)
            _check_opt_in(ref, obj, engine)
            ops = compute(obj)
            if not ops:
                return False
            rv = obj["metadata"]["resourceVersion"]
            guarded = [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}, *ops]
            try:
                with api_errors(
                    f"patch {ref.kind} {name}",
                    temporary=RouterUnavailable,
                    permanent=RouterMisconfigured,
                ):
                    self.custom.patch_namespaced_custom_object(
                        ref.group,
                        ref.version,
                        namespace,
                        ref.plural,
                        name,
                        guarded,
                        _content_type="application/json-patch+json",
                    )
            except RouterUnavailable as exc:
                code = status_code(exc.__cause__) if isinstance(exc.__cause__, ApiException) else 0
                if code == 409:
                    log.info(
                        "%s %s changed under us (attempt %d): re-reading", ref.kind, name, attempt
                    )
                    continue
                if code == 404:
                    raise RouterMisconfigured(f"{ref.kind} {namespace}/{name} was deleted") from exc
                raise
            return True
        raise RouterUnavailable(
            f"{ref.kind} {name} kept changing between read and write ({self.attempts} attempts)"
        )

    def set_httproute_weights(
        self,
        namespace: str,
        name: str,
        desired: Mapping[str, int],
        owned: Collection[str],
        *,
        engine: str,
    ) -> bool:
        """Give the owned backendRefs of HTTPRoute ``name`` the ``desired`` percentages
        (Service name -> percent) for TrtEngine ``engine``, which the route must name in its
        :data:`ROUTE_OPT_IN` annotation; True when something was written."""
        return self._converge(
            HTTPROUTE,
            namespace,
            name,
            engine,
            lambda obj: routers.httproute_patch(obj, desired, owned),
        )

    def set_virtualservice_weights(
        self,
        namespace: str,
        name: str,
        desired: Mapping[str, int],
        owned: Collection[str],
        routes: Collection[str] = (),
        ref: RouteRef = VIRTUALSERVICE,
        *,
        engine: str,
    ) -> bool:
        """Same for the owned destinations of VirtualService ``name`` (its ``http`` routes, or
        only those named in ``routes``). ``ref`` picks the API version (Istio < 1.22: v1beta1)."""
        return self._converge(
            ref,
            namespace,
            name,
            engine,
            lambda obj: routers.virtualservice_patch(obj, desired, owned, routes),
        )

    def release(
        self,
        kind: str,
        namespace: str,
        name: str,
        main: str,
        owned: Collection[str],
        routes: Collection[str] = (),
    ) -> bool:
        """Take a deleted engine's backends out of its route (``kind`` gatewayAPI or istio; see
        ``routers.*_release_patch`` for what stays). A route that no longer exists, or no longer
        names the engine ``main`` in its opt-in annotation, is left alone. True when something
        was written."""
        try:
            if kind == "gatewayAPI":
                return self._converge(
                    HTTPROUTE,
                    namespace,
                    name,
                    main,
                    lambda obj: routers.httproute_release_patch(obj, main, owned),
                )
            return self._converge(
                VIRTUALSERVICE,
                namespace,
                name,
                main,
                lambda obj: routers.virtualservice_release_patch(obj, main, owned, routes),
            )
        except RouterMisconfigured:
            return False  # the route is gone
