"""The one module that writes to the Kubernetes API (reads come from kopf's watch indexes).

Every call is idempotent: Jobs are created if absent (409 means someone else already did,
which is the point of deterministic names), owned objects are server-side applied with one
field manager, deletes ignore 404. API trouble becomes ``kopf.TemporaryError`` (retry later);
a request the API server refuses as malformed becomes ``kopf.PermanentError`` (no retry helps).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trtops_operator import GROUP, KIND, PLURAL, VERSION
from trtops_operator.reconcile import Decision, Event, refused

__all__ = ["Api", "apply_decision"]

FIELD_MANAGER = "trtops-operator"
APPLY = "application/apply-patch+yaml"
REFUSED_RETRY_SECONDS = 60
log = logging.getLogger(__name__)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        if exc.status in (400, 403, 422):
            raise kopf.PermanentError(
                f"{what}: the API server refused it ({exc.status}): {exc.body}"
            ) from exc
        raise kopf.TemporaryError(f"{what}: API error {exc.status} {exc.reason}", delay=5) from exc
    except (HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"{what}: API unreachable: {exc}", delay=5) from exc


class Api:
    """Thin typed wrappers over the kubernetes client for exactly what the operator writes."""

    def __init__(self, api_client: client.ApiClient | None = None, *, connections: int = 4) -> None:
        if api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped library
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]  # untyped library
            configuration = client.Configuration.get_default_copy()
            # One pooled connection per calling thread; urllib3 would open and drop extras.
            configuration.connection_pool_maxsize = connections
            api_client = client.ApiClient(configuration)
        self.client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create_job(self, job: dict[str, Any]) -> bool:
        """Create the Job unless it exists; True when this call created it."""
        meta = job["metadata"]
        with _errors(f"create Job {meta['name']}"):
            try:
                self.batch.create_namespaced_job(meta["namespace"], job)  # type: ignore[arg-type]  # dicts serialize as is
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
        return True

    def adopt_job(self, namespace: str, name: str, owner: dict[str, Any]) -> None:
        """Add ``owner`` to a shared Job's owners: it is collected only when its last owner goes."""
        patch = [{"op": "add", "path": "/metadata/ownerReferences/-", "value": owner}]
        with _errors(f"adopt Job {name}"):
            try:
                self.batch.patch_namespaced_job(
                    name, namespace, patch, _content_type="application/json-patch+json"
                )
            except ApiException as exc:
                if exc.status != 404:  # gone: the next reconcile creates it again
                    raise

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply one owned object (Deployment, Service, PodDisruptionBudget)."""
        meta = obj["metadata"]
        fns: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
        }
        with _errors(f"apply {obj['kind']} {meta['name']}"):
            fns[obj["kind"]](
                meta["name"],
                meta["namespace"],
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
            )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        fns: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "PodDisruptionBudget": self.policy.delete_namespaced_pod_disruption_budget,
        }
        with _errors(f"delete {kind} {name}"):
            try:
                fns[kind](name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with _errors(f"patch status of {KIND} {name}"):
            try:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"status": status},
                    _content_type="application/merge-patch+json",
                )
            except ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report on
                    raise

    def post_event(self, engine: dict[str, Any], event: Event) -> None:
        """Record a Kubernetes Event on the engine; losing one is logged, never fatal."""
        now = dt.datetime.now(dt.UTC)
        meta = engine["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": event.type,
            "reason": event.reason[:128],
            "message": event.message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)  # type: ignore[arg-type]  # as above
        except (ApiException, HTTPError, OSError) as exc:
            log.warning("could not post event %s on %s: %s", event.reason, meta["name"], exc)


def apply_decision(api: Api, engine: dict[str, Any], decision: Decision, now: str) -> list[str]:
    """Carry out a decision (made at ``now``) in a safe order; returns the names of the Jobs
    this call created."""
    meta = engine["metadata"]
    ns = meta["namespace"]
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": False,
        "blockOwnerDeletion": True,
    }
    # A Job that already exists (409) is adopted by a later reconcile, once the watch shows
    # whether this engine is among its owners already (it is after a restart).
    created: list[str] = []
    try:
        created += [job["metadata"]["name"] for job in decision.create if api.create_job(job)]
        for name in decision.adopt:
            api.adopt_job(ns, name, owner)
        for obj in decision.apply:
            api.apply(obj)
        for kind, name in decision.delete:
            api.delete(kind, ns, name)
    except kopf.PermanentError as exc:
        # The user must see why nothing changes: say it in status, then let kopf log it.
        status, event = refused(engine, decision.status, str(exc)[:1024], now)
        api.patch_status(ns, meta["name"], status)
        if event is not None:
            api.post_event(engine, event)
        # A policy, quota or webhook that refused it can change without the engine changing.
        raise kopf.TemporaryError(str(exc), delay=REFUSED_RETRY_SECONDS) from exc
    if decision.status is not None:
        api.patch_status(ns, meta["name"], decision.status)
    for event in decision.events:
        api.post_event(engine, event)
    return created
