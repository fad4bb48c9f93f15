"""The I/O of the traffic routers: read the route object, patch its owned weights, never clobber.

Each write is a JSON patch computed by :mod:`trtops_operator.canary.routers` from the object
just read, headed by ``{"op": "replace", "path": "/metadata/resourceVersion", "value": <read>}``:
a resourceVersion in a patched object is a precondition, so if anyone (Argo CD, another
controller, a person) changed the object between our read and our write, the API server refuses
the whole patch with 409 Conflict, and we read again and recompute from what they wrote. (A
JSON-patch ``test`` op would guard too, but its failure is an anonymous 422 that cannot be told
apart from a patch the schema refuses.) The patch touches only owned weights, so even an
unguarded race could not remove someone else's field; the guard also keeps array indices honest.

Synchronous (the kubernetes client is); the reconciler calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trtops_operator.canary import routers
from trtops_operator.canary.errors import RouterMisconfigured, RouterUnavailable

__all__ = ["HTTPROUTE", "VIRTUALSERVICE", "RouteRef", "RouterIO"]

log = logging.getLogger(__name__)

JsonPatch = list[dict[str, Any]]


class RouteRef:
    """Group, version and plural of a route kind."""

    def __init__(self, kind: str, group: str, version: str, plural: str) -> None:
        self.kind, self.group, self.version, self.plural = kind, group, version, plural


HTTPROUTE = RouteRef("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes")
VIRTUALSERVICE = RouteRef("VirtualService", "networking.istio.io", "v1", "virtualservices")


class RouterIO:
    """Sets weights on HTTPRoutes and VirtualServices; ``attempts`` bounds the re-read loop."""

    def __init__(self, api_client: client.ApiClient, *, attempts: int = 5) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.attempts = attempts

    def get(self, ref: RouteRef, namespace: str, name: str) -> dict[str, Any]:
        try:
            obj = self.custom.get_namespaced_custom_object(
                ref.group, ref.version, namespace, ref.plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise RouterMisconfigured(
                    f"{ref.kind} {namespace}/{name} (spec.rollout.trafficRouter) does not exist"
                ) from exc
            raise RouterUnavailable(f"read {ref.kind} {name}: API error {exc.status}") from exc
        except (HTTPError, OSError) as exc:
            raise RouterUnavailable(f"read {ref.kind} {name}: API unreachable: {exc}") from exc
        if not isinstance(obj, dict):
            raise RouterUnavailable(f"read {ref.kind} {name}: unexpected answer {obj!r:.200}")
        return obj

    def _patch(self, ref: RouteRef, namespace: str, name: str, patch: JsonPatch) -> None:
        self.custom.patch_namespaced_custom_object(
            ref.group,
            ref.version,
            namespace,
            ref.plural,
            name,
            patch,
            _content_type="application/json-patch+json",
        )

    def _converge(
        self,
        ref: RouteRef,
        namespace: str,
        name: str,
        compute: Callable[[Mapping[str, Any]], JsonPatch],
    ) -> bool:
        for attempt in range(1, self.attempts + 1):
            obj = self.get(ref, namespace, name)
            ops = compute(obj)
            if not ops:
                return False
            rv = obj["metadata"]["resourceVersion"]
            guarded = [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}, *ops]
            try:
                self._patch(ref, namespace, name, guarded)
            except ApiException as exc:
                if exc.status == 409:
                    log.info(
                        "%s %s changed under us (attempt %d): re-reading", ref.kind, name, attempt
                    )
                    continue
                if exc.status == 404:
                    raise RouterMisconfigured(f"{ref.kind} {namespace}/{name} was deleted") from exc
                raise RouterUnavailable(
                    f"patch {ref.kind} {name}: API error {exc.status}: {exc.body}"
                ) from exc
            except (HTTPError, OSError) as exc:
                raise RouterUnavailable(f"patch {ref.kind} {name}: API unreachable: {exc}") from exc
            return True
        raise RouterUnavailable(
            f"{ref.kind} {name} kept changing between read and write ({self.attempts} attempts)"
        )

    def set_httproute_weights(
        self, namespace: str, name: str, desired: Mapping[str, int], owned: Collection[str]
    ) -> bool:
        """Give the owned backendRefs of HTTPRoute ``name`` the ``desired`` percentages
        (Service name -> percent); True when something was written."""
        return self._converge(
            HTTPROUTE, namespace, name, lambda obj: routers.httproute_patch(obj, desired, owned)
        )

    def set_virtualservice_weights(
        self,
        namespace: str,
        name: str,
        desired: Mapping[str, int],
        owned: Collection[str],
        routes: Collection[str] = (),
        ref: RouteRef = VIRTUALSERVICE,
    ) -> bool:
        """Same for the owned destinations of VirtualService ``name`` (its ``http`` routes, or
        only those named in ``routes``). ``ref`` picks the API version (Istio < 1.22: v1beta1)."""
        return self._converge(
            ref,
            namespace,
            name,
            lambda obj: routers.virtualservice_patch(obj, desired, owned, routes),
        )
