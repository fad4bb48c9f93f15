"""A small local gateway for end-to-end tests and the demo: test code, not product code.

On a real cluster a Gateway API implementation (or a mesh, or kube-proxy) turns the traffic
router's state into packets. Here this process does that job, so that the traffic the tests send
follows the weights the operator set:

- ``--httproute NS/NAME``: every request picks a backendRef of the route's first rule at random in
  proportion to its ``weight`` (Gateway API semantics: weight 0 gets nothing), then a ready
  endpoint of that Service;
- ``--service NS/NAME``: every request picks a ready endpoint of the Service uniformly, as
  kube-proxy does, so a replica-ratio split shows as the ratio of ready pods.

Endpoints are the Service's ready pods (whose IPs the local node agent serves on). State is
refreshed every ``--refresh`` seconds.
Counts of requests per Service are kept for the tests at ``GET /_gateway/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes import client, config

log = logging.getLogger("gateway")


@dataclass
class Routes:
    # (service, weight, ready endpoints "ip:port")
    backends: list[tuple[str, int, list[str]]] = field(default_factory=list)


class Resolver:
    """Reads the router's state from the API server (in a thread: the client is synchronous)."""

    def __init__(
        self, api: client.ApiClient, namespace: str, httproute: str | None, service: str | None
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace, self.httproute, self.service = namespace, httproute, service

    def endpoints(self, service: str, port: int | None) -> list[str]:
        """Ready pods behind ``service`` as ``ip:targetPort``.

        Resolved from the Service's selector and pod readiness, not EndpointSlices: the API
        server refuses loopback addresses in EndpointSlices, and the local node agent's pod IPs
        are loopback addresses (127.0.x.y).
        """
        try:
            svc = self.core.read_namespaced_service(service, self.namespace)
        except client.ApiException:
            return []
        selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
        if not selector:
            return []
        ports = svc.spec.ports or []
        chosen = next((p for p in ports if port is None or p.port == port), None)
        if chosen is None:
            return []
        target = int(chosen.target_port) if str(chosen.target_port).isdigit() else chosen.port
        out = []
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            if ready and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                out.append(f"{pod.status.pod_ip}:{target}")
        return sorted(out)

    def resolve(self) -> Routes:
        if self.service:
            return Routes([(self.service, 1, self.endpoints(self.service, None))])
        route = self.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", self.namespace, "httproutes", self.httproute or ""
        )
        rules = route.get("spec", {}).get("rules") or [{}]
        backends = []
        for ref in rules[0].get("backendRefs") or []:
            svc = ref["name"]
            backends.append((svc, int(ref.get("weight", 1)), self.endpoints(svc, ref.get("port"))))
        return Routes(backends)


class Gateway:
    def __init__(self, resolver: Resolver, refresh: float) -> None:
        self.resolver = resolver
        self.refresh = refresh
        self.routes = Routes()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None

    async def refresher(self) -> None:
        while True:
            try:
                self.routes = await asyncio.to_thread(self.resolver.resolve)
            except Exception as exc:  # keep the last known routes, as a data plane would
                log.warning("refresh failed: %s", exc)
            await asyncio.sleep(self.refresh)

    def pick(self) -> tuple[str, str] | None:
        live = [(svc, w, eps) for svc, w, eps in self.routes.backends if w > 0 and eps]
        if not live:
            return None
        svc, _, eps = random.choices(live, weights=[w for _, w, _ in live])[0]
        return svc, random.choice(eps)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_gateway/stats":
            return web.json_response(
                {
                    "requests": dict(self.counts),
                    "errors": dict(self.errors),
                    "backends": [[s, w, e] for s, w, e in self.routes.backends],
                }
            )
        choice = self.pick()
        if choice is None:
            return web.json_response({"error": "no healthy backend"}, status=503)
        svc, endpoint = choice
        self.counts[svc] += 1
        assert self.session is not None
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "accept", "inference-header-content-length")
        }
        try:
            async with self.session.request(
                request.method, f"http://{endpoint}{request.path_qs}", data=body, headers=headers
            ) as upstream:
                payload = await upstream.read()
                out_headers = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "inference-header-content-length")
                }
                return web.Response(body=payload, status=upstream.status, headers=out_headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.errors[svc] += 1
            return web.json_response({"error": f"upstream {svc} failed: {exc}"}, status=502)


async def serve(
    gateway: Gateway, host: str, port: int, ready: threading.Event | None = None
) -> None:
    gateway.session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=256)
    )
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    refresher = asyncio.create_task(gateway.refresher())
    if ready:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await gateway.session.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--httproute", help="NAMESPACE/NAME of the HTTPRoute to follow")
    target.add_argument("--service", help="NAMESPACE/NAME of the Service to balance over")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--refresh", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ns, name = (args.httproute or args.service).split("/", 1)
    resolver = Resolver(
        config.new_client_from_config(),
        ns,
        name if args.httproute else None,
        name if args.service else None,
    )
    asyncio.run(serve(Gateway(resolver, args.refresh), args.host, args.port))


def stats(url: str) -> dict[str, Any]:
    """The gateway's request counts per Service (for tests)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/_gateway/stats", timeout=5) as resp:  # noqa: S310 - loopback
        result: dict[str, Any] = json.load(resp)
    return result


if __name__ == "__main__":
    main()


@contextlib.contextmanager
def start_gateway(
    *, httproute: str | None = None, service: str | None = None, log_dir: Any = None
) -> Any:
    """Run the gateway as a subprocess on a free loopback port; yields its base URL."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.support.cluster import REPO, stop_process

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = ["--httproute", httproute] if httproute else ["--service", str(service)]
    log_path = Path(log_dir or "/tmp") / f"gateway-{port}.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.gateway", *target, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                stats(url)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"gateway did not start: {log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        stop_process(proc, grace=10)
