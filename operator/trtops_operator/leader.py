"""One active operator: leader election on a ``coordination.k8s.io/v1`` Lease.

It follows client-go's ``leaderelection`` (the one controller-runtime and kube-controller-manager
use): the holder renews the Lease every ``retry_s``; a candidate takes it over only when the
record has not changed for ``lease_duration_s`` by the candidate's own clock (never comparing
clocks across machines); every write is guarded by the resourceVersion just read, so of two
candidates racing, the API server lets exactly one win (409 for the other). The holder counts
itself the leader only until ``renew_deadline_s`` after the start of its last successful renewal,
which is shorter than what a candidate waits, so two operators never both believe they lead.
A holder that stops cleanly releases the Lease (empty holder), and a candidate takes it at its
next try: an upgrade's overlap hands over within ``retry_s``, a crash within
``lease_duration_s + retry_s``.

Why a Lease rather than kopf's peering: kopf pauses *every* operator when two have the same
priority, needs its own CRD, and lets a newly started operator with a higher priority take over
from one in the middle of its work. A Lease is the Kubernetes way, needs only RBAC on one Lease.

Followers keep watching (their indexes stay warm for a fast takeover) but act on nothing: the
handlers ask :attr:`Elector.leading` before each reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

__all__ = ["Elector", "LeaderConfig", "LeaseRecord", "default_namespace"]

log = logging.getLogger(__name__)
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(watched: list[str] | tuple[str, ...] = ()) -> str:
    """Where the Lease lives: the pod's namespace (``POD_NAMESPACE`` from the downward API, else
    the service account's), else the first watched namespace without wildcards, else
    ``default``. Run outside a cluster with ``-n NS``, operators of one namespace compete."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return _SA_NAMESPACE.read_text().strip()
    plain = [ns for ns in watched if ns and not any(c in ns for c in "*?[!")]
    return plain[0] if plain else "default"


@dataclass(frozen=True)
class LeaderConfig:
    """Settings, from ``TRTOPS_LEADER_ELECTION*`` (the CLI flags land there). Off when unset:
    the CLI turns it on unless ``--standalone``."""

    enabled: bool = False
    namespace: str = "default"
    name: str = "trtops-operator"
    identity: str = ""
    lease_duration_s: float = 15.0  # client-go's defaults: 15 s, 10 s, 2 s
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LeaderConfig:
        e = os.environ if env is None else env
        return cls(
            enabled=e.get("TRTOPS_LEADER_ELECTION", "") in ("1", "true"),
            namespace=e.get("TRTOPS_LEADER_ELECTION_NAMESPACE") or "default",
            name=e.get("TRTOPS_LEADER_ELECTION_NAME") or "trtops-operator",
            identity=e.get("TRTOPS_LEADER_ELECTION_ID")
            or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
            lease_duration_s=float(e.get("TRTOPS_LEASE_DURATION_SECONDS", "15")),
            renew_deadline_s=float(e.get("TRTOPS_LEASE_RENEW_DEADLINE_SECONDS", "10")),
            retry_s=float(e.get("TRTOPS_LEASE_RETRY_SECONDS", "2")),
        )


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease that election reads."""

    holder: str
    duration_s: float
    renew_time: str
    transitions: int
    resource_version: str

    @classmethod
    def of(cls, lease: Any) -> LeaseRecord:
        spec = lease.spec
        return cls(
            holder=spec.holder_identity or "",
            duration_s=float(spec.lease_duration_seconds or 0),
            renew_time=str(spec.renew_time or ""),
            transitions=int(spec.lease_transitions or 0),
            resource_version=str(lease.metadata.resource_version or ""),
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Elector:
    """Campaign for, hold and release one Lease. ``on_elected`` runs (in the event loop) each
    time this process becomes the leader: it must re-check everything, since a follower acted on
    nothing."""

    def __init__(
        self,
        config: LeaderConfig,
        api_client: client.ApiClient,
        on_elected: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.api = client.CoordinationV1Api(api_client)
        self.on_elected = on_elected
        self._leading_until = 0.0  # monotonic
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0  # monotonic time it was first seen
        self.holder = ""  # who holds it, as last read

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._leading_until

    def _lease_body(self, old: LeaseRecord | None, *, release: bool = False) -> dict[str, Any]:
        now = _now().isoformat(timespec="microseconds").replace("+00:00", "Z")
        ident = "" if release else self.config.identity
        taking = old is None or old.holder != self.config.identity
        spec: dict[str, Any] = {
            "holderIdentity": ident,
            "leaseDurationSeconds": 1 if release else max(1, round(self.config.lease_duration_s)),
            "renewTime": now,
            "leaseTransitions": (old.transitions if old else 0) + (1 if taking and old else 0),
        }
        if taking:
            spec["acquireTime"] = now
        meta: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if old is not None:
            meta["resourceVersion"] = old.resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    def try_acquire_or_renew(self) -> bool:
        """One round (blocking): read the Lease, take or renew it if ours to take. True when this
        process holds it now. Raises ``ApiException``/``HTTPError``/``OSError`` on API trouble."""
        started = time.monotonic()
        ns, name = self.config.namespace, self.config.name
        try:
            lease = self.api.read_namespaced_lease(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self.api.create_namespaced_lease(ns, self._lease_body(None))  # type: ignore[arg-type]  # dicts serialize as is
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate created it first
                    return False
                raise
            self._leading_until = started + self.config.renew_deadline_s
            self.holder = self.config.identity
            return True
        old = LeaseRecord.of(lease)
        self.holder = old.holder
        seen = (old.holder, old.renew_time)
        if seen != self._observed:
            self._observed, self._observed_at = seen, started
        mine = old.holder == self.config.identity
        expired = started >= self._observed_at + old.duration_s
        if old.holder and not mine and not expired:
            return False
        try:
            self.api.replace_namespaced_lease(name, ns, self._lease_body(old))  # type: ignore[arg-type]  # as above
        except ApiException as exc:
            if exc.status in (404, 409):  # changed since our read: the next round reads again
                return False
            raise
        self._leading_until = started + self.config.renew_deadline_s
        self.holder = self.config.identity
        return True

    def release(self) -> None:
        """Give the Lease up at once if this process holds it (a clean shutdown); best effort."""
        if not self.leading:
            return
        self._leading_until = 0.0
        try:
            lease = self.api.read_namespaced_lease(self.config.name, self.config.namespace)
            old = LeaseRecord.of(lease)
            if old.holder == self.config.identity:
                self.api.replace_namespaced_lease(
                    self.config.name,
                    self.config.namespace,
                    self._lease_body(old, release=True),  # type: ignore[arg-type]  # as above
                )
                log.info("released Lease %s/%s", self.config.namespace, self.config.name)
        except (ApiException, HTTPError, OSError) as exc:
            log.warning("could not release the Lease (the next leader waits it out): %s", exc)

    async def run(self) -> None:
        """Campaign and renew until cancelled; logs each change of leadership."""
        was_leading = False
        where = f"Lease {self.config.namespace}/{self.config.name}"
        log.info("campaigning for %s as %s", where, self.config.identity)
        while True:
            try:
                await asyncio.to_thread(self.try_acquire_or_renew)
            except ApiException as exc:
                log.warning("could not renew %s: %s %s", where, exc.status, exc.reason)
            except (HTTPError, OSError) as exc:
                log.warning("could not renew %s: %s", where, exc)
            leading = self.leading
            if leading and not was_leading:
                log.info("became the leader (%s)", where)
                self.on_elected()
            elif was_leading and not leading:
                log.warning("stopped leading (%s now held by %r)", where, self.holder)
            was_leading = leading
            await asyncio.sleep(self.config.retry_s)
