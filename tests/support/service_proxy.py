"""Cluster DNS and kube-proxy for the local node agent: test and demo code, not product code.

On a real node, a pod reaches ``http://<svc>.<ns>.svc:<port>/...`` through the cluster's DNS (the
name becomes the Service's ClusterIP) and kube-proxy (a connection to the ClusterIP goes to one
ready endpoint, chosen when the connection opens). The local node agent runs pods as host
processes, with no cluster DNS and no kube-proxy, so it does both jobs here:

- :meth:`ServiceProxies.rewrite` replaces each Service name in a container's args and env
  (``<svc>.<ns>.svc``, optionally ``.cluster.local``, with its ``:port``) by a loopback address
  of the agent's own, one per Service, as the agent already rewrites mount paths;
- on that address and port a listener forwards each connection to a ready endpoint of the
  Service, looked up when the connection opens (``gateway.Resolver.endpoints``: the Service's
  selector and its pods' readiness). A Service that does not exist yet, or has no ready pod, gets
  the connection closed at once, as a Service without endpoints rejects it.

So a stable pod's ``--shadow-url http://<engine>-canary.<ns>.svc:8000/...`` reaches whichever
canary runs when the request is sent, and fails fast while none does, as in a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import selectors
import socket
import socketserver
import threading
import time

from kubernetes import client

from tests.support.gateway import Resolver

log = logging.getLogger("node-agent.services")

# <svc>.<ns>.svc[.cluster.local][:port]: DNS labels, as Kubernetes names Services.
SERVICE_NAME = re.compile(
    r"\b(?P<svc>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.svc(\.cluster\.local)?(:(?P<port>[0-9]{1,5}))?\b"
)
ENDPOINTS_TTL = 1.0  # seconds an endpoint list is reused (new connections only)


class _Forward(socketserver.BaseRequestHandler):
    server: _Listener

    def handle(self) -> None:
        endpoint = self.server.proxies.endpoint(
            self.server.namespace, self.server.service, self.server.port
        )
        if endpoint is None:
            return  # no ready endpoint: the connection is closed, as a Service without any
        host, port = endpoint.rsplit(":", 1)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            return
        with upstream:
            upstream.settimeout(None)
            _pipe(self.request, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select(timeout=60):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()


class _Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], proxies: ServiceProxies, namespace: str, service: str
    ) -> None:
        self.proxies, self.namespace, self.service, self.port = (
            proxies,
            namespace,
            service,
            address[1],
        )
        super().__init__(address, _Forward)


class ServiceProxies:
    """One loopback address per Service (``127.<octet>.255.N``, in the agent's own range), a
    listener per Service port that a container's args or env name."""

    def __init__(self, api: client.ApiClient, octet: int) -> None:
        self.api = api
        self.octet = octet
        self.addresses: dict[tuple[str, str], str] = {}
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self._cache: dict[tuple[str, str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def rewrite(self, value: str) -> str:
        """``value`` with every Service name (and port) replaced by the proxy's address."""

        def sub(match: re.Match[str]) -> str:
            port = int(match.group("port") or 80)
            address = self.listen(match.group("ns"), match.group("svc"), port)
            return f"{address}:{port}" if match.group("port") else address

        return SERVICE_NAME.sub(sub, value)

    def listen(self, namespace: str, service: str, port: int) -> str:
        """The Service's proxy address, with a listener on ``port`` (started once)."""
        with self._lock:
            key = (namespace, service)
            if key not in self.addresses:
                n = len(self.addresses)
                self.addresses[key] = f"127.{self.octet}.255.{n % 250 + 2}"
            address = self.addresses[key]
            if (address, port) not in self.listeners:
                listener = _Listener((address, port), self, namespace, service)
                threading.Thread(
                    target=listener.serve_forever, name=f"svc-{service}", daemon=True
                ).start()
                self.listeners[(address, port)] = listener
                log.info("service %s/%s:%d on %s:%d", namespace, service, port, address, port)
            return address

    def endpoint(self, namespace: str, service: str, port: int) -> str | None:
        """A ready endpoint (``ip:targetPort``) of the Service's ``port``, picked at random."""
        key = (namespace, service, port)
        cached = self._cache.get(key)
        if cached is None or time.monotonic() - cached[0] > ENDPOINTS_TTL:
            endpoints = Resolver(self.api, namespace, None, None).endpoints(service, port)
            cached = (time.monotonic(), endpoints)
            self._cache[key] = cached
        return random.choice(cached[1]) if cached[1] else None

    def close(self) -> None:
        for listener in self.listeners.values():
            with contextlib.suppress(OSError):
                listener.shutdown()
                listener.server_close()
        self.listeners.clear()
