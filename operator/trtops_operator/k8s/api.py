"""``Api``: the operator's writes of its own objects (Jobs, server-side applied Deployments,
Services, PodDisruptionBudgets, HorizontalPodAutoscalers, NetworkPolicies), the engine's status,
finalizers and Events; and ``apply_decision``, which carries out one reconcile's writes."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from trtops_operator import GROUP, KIND, PLURAL, VERSION
from trtops_operator.decision import Decision, Event
from trtops_operator.errors import ApiRefused, ApiUnavailable, ClaimNotAllowed, NameConflict
from trtops_operator.k8s.error_map import FIELD_MANAGER, api_errors
from trtops_operator.k8s.routes import RouterIO

__all__ = ["CLAIM_OPT_IN", "Api", "apply_decision"]

APPLY = "application/apply-patch+yaml"
log = logging.getLogger(__name__)
# A PersistentVolumeClaim opts in to being mounted by TrtEngine pods with this label ("true").
CLAIM_OPT_IN = "trtops.dev/mountable"


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
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.routes = RouterIO(api_client)

    def check_claims(self, namespace: str, pod_spec: Mapping[str, Any]) -> None:
        """ClaimNotAllowed unless every claim the pod mounts carries :data:`CLAIM_OPT_IN`."""
        for volume in pod_spec.get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            labels: Mapping[str, str] = {}
            with api_errors(f"read PersistentVolumeClaim {claim}", ignore=(404,)):
                pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
                labels = (pvc.metadata.labels if pvc.metadata else None) or {}
            if labels.get(CLAIM_OPT_IN) != "true":
                raise ClaimNotAllowed(
                    f"PersistentVolumeClaim {namespace}/{claim} has not opted in to being mounted"
                    f" by TrtEngine pods (or does not exist): label it {CLAIM_OPT_IN}=true"
                )

    def create_job(self, job: dict[str, Any]) -> bool:
        """Create the Job unless it exists; True when this call created it."""
        meta = job["metadata"]
        self.check_claims(meta["namespace"], job["spec"]["template"]["spec"])
        created = False
        with api_errors(f"create Job {meta['name']}", ignore=(409,)):
            self.batch.create_namespaced_job(meta["namespace"], job)  # type: ignore[arg-type]  # dicts serialize as is
            created = True
        return created

    def adopt_job(self, namespace: str, name: str, owner: dict[str, Any]) -> None:
        """Add ``owner`` to a shared Job's owners: it is collected only when its last owner goes."""
        patch = [{"op": "add", "path": "/metadata/ownerReferences/-", "value": owner}]
        # 404: gone; the next reconcile creates it again.
        with api_errors(f"adopt Job {name}", ignore=(404,)):
            self.batch.patch_namespaced_job(
                name, namespace, patch, _content_type="application/json-patch+json"
            )

    def _kind_fns(self, verb: str) -> dict[str, Callable[..., Any]]:
        return {
            "Deployment": getattr(self.apps, f"{verb}_namespaced_deployment"),
            "Service": getattr(self.core, f"{verb}_namespaced_service"),
            "PodDisruptionBudget": getattr(self.policy, f"{verb}_namespaced_pod_disruption_budget"),
            "HorizontalPodAutoscaler": getattr(
                self.autoscaling, f"{verb}_namespaced_horizontal_pod_autoscaler"
            ),
            "NetworkPolicy": getattr(self.networking, f"{verb}_namespaced_network_policy"),
        }

    def _controller(self, kind: str, namespace: str, name: str) -> tuple[str | None, str | None]:
        """(uid of the object, uid of its controller), None for what is not there."""
        try:
            existing = self._kind_fns("read")[kind](name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        refs = existing.metadata.owner_references or []
        controller = next((str(r.uid) for r in refs if r.controller), None)
        return str(existing.metadata.uid), controller

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply one owned object (Deployment, Service, PodDisruptionBudget,
        HorizontalPodAutoscaler).

        Only over an object this engine controls (its ``controller`` owner reference) or none:
        another object of that name raises :class:`NameConflict` and is left as it is. A new
        object is applied without force, so one created meanwhile is a conflict, not taken.
        """
        meta = obj["metadata"]
        kind = obj["kind"]
        refs = meta.get("ownerReferences", [])
        owner = next((r["uid"] for r in refs if r.get("controller")), None)
        if kind == "Deployment":
            self.check_claims(meta["namespace"], obj["spec"]["template"]["spec"])
        with api_errors(f"apply {kind} {meta['name']}"):
            uid, controller = self._controller(kind, meta["namespace"], meta["name"])
            if uid is not None and controller != owner:
                raise NameConflict(kind, meta["namespace"], meta["name"])
            try:
                self._kind_fns("patch")[kind](
                    meta["name"],
                    meta["namespace"],
                    obj,
                    field_manager=FIELD_MANAGER,
                    force=uid is not None,  # ours: converge it, whoever changed it since
                    _content_type=APPLY,
                )
            except ApiException as exc:
                if exc.status == 409 and uid is None:  # created by someone else meanwhile
                    raise NameConflict(kind, meta["namespace"], meta["name"]) from exc
                raise

    def delete(self, kind: str, namespace: str, name: str, owner_uid: str) -> None:
        """Delete an object the engine ``owner_uid`` controls; anything else of that name (a
        namesake created since the engine let go of the name) is left alone."""
        # 404: gone already; 409: replaced between the read and the delete, so not ours.
        with api_errors(f"delete {kind} {name}", ignore=(404, 409)):
            uid, controller = self._controller(kind, namespace, name)
            if uid is None or controller != owner_uid:
                return
            options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
            self._kind_fns("delete")[kind](name, namespace, body=options)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a build Job (one that failed on its storage, to retry it) with its pods
        (the API's default for Jobs orphans them). Jobs are shared, never controlled."""
        with api_errors(f"delete Job {name}", ignore=(404,)):
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")

    def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the status; the engine as written (None: deleted meanwhile)."""
        written: dict[str, Any] | None = None
        with api_errors(f"patch status of {KIND} {name}", ignore=(404,)):
            written = self.custom.patch_namespaced_custom_object_status(  # type: ignore[assignment]  # the object as JSON
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
                _content_type="application/merge-patch+json",
            )
        return written

    def set_finalizers(
        self, engine: Mapping[str, Any], finalizers: list[str]
    ) -> dict[str, Any] | None:
        """Replace the engine's finalizers, guarded by the resourceVersion of ``engine`` (our
        copy), so someone else's finalizer added meanwhile is never dropped: a changed engine
        is ``ApiUnavailable`` (read again). Returns the engine as written (None: gone)."""
        meta = engine["metadata"]
        patch = [
            {
                "op": "replace",
                "path": "/metadata/resourceVersion",
                "value": meta["resourceVersion"],
            },
            {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
        ]
        written: dict[str, Any] | None = None
        with api_errors(f"set finalizers of {KIND} {meta['name']}", ignore=(404,)):
            written = self.custom.patch_namespaced_custom_object(  # type: ignore[assignment]  # as above
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                patch,
                _content_type="application/json-patch+json",
            )
        return written

    def post_event(self, engine: Mapping[str, Any], event: Event) -> None:
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
            with api_errors(f"post Event {event.reason}"):
                self.core.create_namespaced_event(meta["namespace"], body)  # type: ignore[arg-type]  # as above
        except (ApiRefused, ApiUnavailable) as exc:
            log.warning("could not post event %s on %s: %s", event.reason, meta["name"], exc)


def apply_decision(
    api: Api, engine: Mapping[str, Any], decision: Decision
) -> tuple[list[str], dict[str, Any] | None]:
    """Carry out a decision's object writes in a safe order (Jobs, adoptions, applies, deletes),
    then its status and Events; returns the names of the Jobs this call created and the engine
    as its status write left it (None: no status written). Raises ``ApiRefused`` before writing
    status when an object is refused (the caller reports it)."""
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
    created = [job["metadata"]["name"] for job in decision.create if api.create_job(job)]
    for name in decision.adopt:
        api.adopt_job(ns, name, owner)
    for obj in decision.apply:
        api.apply(obj)
    for kind, name in decision.delete:
        if kind == "Job":
            api.delete_job(ns, name)
        else:
            api.delete(kind, ns, name, meta["uid"])
    written = None
    if decision.status is not None:
        written = api.patch_status(ns, meta["name"], decision.status)
    for event in decision.events:
        if event.job and event.job not in created and not event.folded:
            continue  # a Job someone (or an earlier pass) created already: told then
        api.post_event(engine, event)
    return created, written
