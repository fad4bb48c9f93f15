"""What a tenant can aim at the operator through ``analysis.prometheus.address``: each test is a
server that is not Prometheus (aiohttp, in-process, loopback) answering the way an attacker or
an internal service would, and what the operator does with it. A real Prometheus is used in
test_prometheus.py; here only a hostile server shows the behaviour."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from trtops_operator.canary.analysis import Verdict
from trtops_operator.canary.prometheus import MAX_RESPONSE_BYTES, PrometheusClient, PrometheusError
from trtops_operator.canary.runner import AnalysisPool, analyse
from trtops_operator.config import OperatorConfig
from trtops_operator.models import Analysis, PrometheusSource
from trtops_operator.reconcile import Observed, decide

MARKER = "internal-secret-7f3a"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler, hits: list[str] | None = None) -> AsyncIterator[str]:
    """An HTTP server on a free loopback port answering every path with ``handler``."""

    async def counted(request: web.Request) -> web.StreamResponse:
        if hits is not None:
            hits.append(request.path_qs)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counted)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def analysis(address: str) -> Analysis:
    return Analysis.model_validate({"prometheus": {"address": address}, "minRequests": 1})


async def run_analysis(address: str, allowed: list[str], timeout: float = 5.0) -> Verdict:
    return await analyse(
        analysis(address),
        allowed=allowed,
        model="m",
        canary_revision="r2",
        stable_revision="r1",
        timeout_seconds=timeout,
    )


# A server in its own process, so that what it allocates is not counted as the operator's.
BIG_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
chunk = b"x" * (1 << 20)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if sys.argv[1] == "declared":
            self.send_header("Content-Length", str(64 * len(chunk)))
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(chunk)
        except OSError:
            pass
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


@pytest.mark.parametrize("framing", ["declared", "close-delimited"])
def test_huge_answer_is_dropped_at_the_cap_without_being_buffered(framing: str) -> None:
    """A 64 MiB answer (with Content-Length, or without: read until the connection closes)
    ends in BadResponse while the operator has allocated a small fraction of it; before, the
    whole body was read into memory (600 MiB took the operator to 4.2 GiB)."""
    server = subprocess.Popen(
        [sys.executable, "-c", BIG_SERVER, framing], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"

        async def query() -> PrometheusError:
            async with PrometheusClient(url, timeout_seconds=20) as client:
                with pytest.raises(PrometheusError) as err:
                    await client.query("up")
            return err.value

        tracemalloc.start()
        try:
            err = asyncio.run(query())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        server.kill()
        server.wait(5)
        if server.stdout is not None:
            server.stdout.close()
    assert err.reason == "BadResponse"
    assert f"more than {MAX_RESPONSE_BYTES} bytes" in err.message
    print(f"{framing}: 64 MiB answer, client peak {peak / 2**20:.1f} MiB")
    assert peak < 4 * MAX_RESPONSE_BYTES, peak


def test_deeply_nested_json_is_a_bad_response_not_a_crash() -> None:
    """100k nested arrays (under the cap) made ``json.loads`` raise RecursionError, which escaped
    the analysis and crashed every reconcile of the engine."""

    async def nested(request: web.Request) -> web.StreamResponse:
        return web.Response(text="[" * 100_000, content_type="application/json")

    async def scenario() -> Verdict:
        async with serve(nested) as url:
            return await run_analysis(url, [url])

    verdict = asyncio.run(scenario())
    assert (verdict.kind, verdict.inconclusive) == ("Inconclusive", "BadResponse")


def test_a_server_that_never_answers_costs_a_bounded_time_and_no_reconcile_worker() -> None:
    """Every query gives up after the timeout; the pool hands the reconcile None at once and the
    verdict later, and never runs more analyses at once than its size."""
    in_flight: list[int] = [0]
    peak: list[int] = [0]

    async def silent(request: web.Request) -> web.StreamResponse:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await asyncio.sleep(3600)
        finally:
            in_flight[0] -= 1
        raise AssertionError("unreachable")

    async def scenario() -> None:
        async with serve(silent) as url:
            start = time.monotonic()
            verdict = await run_analysis(url, [url], timeout=0.5)
            assert (verdict.kind, verdict.inconclusive) == ("Inconclusive", "PrometheusTimeout")
            assert time.monotonic() - start < 3

            woken: list[Any] = []
            pool = AnalysisPool(2, woken.append, deadline_seconds=0.6)
            engines = [("ns", f"e{i}") for i in range(5)]
            start = time.monotonic()
            for key in engines:
                polled = pool.poll(key, "t", lambda: run_analysis(url, [url], timeout=30))
                assert polled is None  # the reconcile never waits for Prometheus
            assert time.monotonic() - start < 0.1
            deadline = time.monotonic() + 10
            while len(woken) < len(engines) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert sorted(woken) == engines  # every engine woken, each after its deadline
            # Two analyses at once, each with 10 queries (5 per revision) in flight.
            assert peak[0] <= 2 * 10
            for key in engines:
                v = pool.poll(key, "t", lambda: run_analysis(url, [url]))
                assert v is not None
                assert (v.kind, v.inconclusive) == ("Inconclusive", "PrometheusTimeout")
            await pool.close()

    asyncio.run(scenario())


def test_an_address_the_installer_did_not_allow_is_never_queried() -> None:
    """An internal endpoint named in a spec gets no request, and its body reaches no message;
    before, its first 200 characters were put in status and a Warning Event."""
    hits: list[str] = []

    async def internal(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"{MARKER} " * 100)

    async def scenario() -> Verdict:
        async with serve(internal, hits) as url:
            return await run_analysis(url, ["http://prometheus.monitoring:9090"])

    verdict = asyncio.run(scenario())
    assert (verdict.kind, verdict.inconclusive) == ("Inconclusive", "PrometheusNotAllowed")
    assert "http://prometheus.monitoring:9090" in verdict.reason  # says what is allowed
    assert hits == []
    assert MARKER not in verdict.reason


def test_bodies_and_redirects_never_reach_the_verdict() -> None:
    """An allowed address that answers garbage, an error with a message, or a redirect to an
    internal endpoint: the verdict names the trouble, never what the body said, and the
    redirect is not followed."""
    internal_hits: list[str] = []

    async def internal(request: web.Request) -> web.StreamResponse:
        return web.Response(text=MARKER)

    async def scenario() -> list[Verdict]:
        async with serve(internal, internal_hits) as target:

            async def redirect(request: web.Request) -> web.StreamResponse:
                raise web.HTTPFound(f"{target}/admin")

            async def not_json(request: web.Request) -> web.StreamResponse:
                return web.Response(text=f"<html>{MARKER}</html>", status=200)

            async def error(request: web.Request) -> web.StreamResponse:
                return web.json_response(
                    {"status": "error", "errorType": MARKER, "error": MARKER}, status=400
                )

            verdicts = []
            for handler in (redirect, not_json, error):
                async with serve(handler) as url:
                    verdicts.append(await run_analysis(url, [url]))
            return verdicts

    redirected, garbage, refused = asyncio.run(scenario())
    assert internal_hits == []
    assert (redirected.inconclusive, garbage.inconclusive) == ("BadResponse", "BadResponse")
    assert "redirects are refused" in redirected.reason
    assert refused.inconclusive == "QueryError"
    for v in (redirected, garbage, refused):
        assert MARKER not in v.reason


@pytest.mark.parametrize(
    "address",
    [
        f"http://admin:{MARKER}@prometheus.monitoring:9090",
        f"http://prometheus.monitoring:9090/api?token={MARKER}",
        f"http://prometheus.monitoring:9090/#{MARKER}",
    ],
)
def test_credentials_query_and_fragment_are_refused_and_not_echoed(address: str) -> None:
    """The spec's address with user info, a query or a fragment is refused (the CRD's pattern;
    the models mirror it), and neither status nor Events repeat the secret in it; at runtime the
    allowlist check refuses it too, with the same care."""
    body = {
        "metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "model": {"uri": "m.onnx"},
            "storage": {"claimName": "c"},
            "rollout": {
                "trafficRouter": {"replicas": {}},
                "analysis": {"prometheus": {"address": address}},
            },
        },
    }
    decision = decide(body, Observed(), OperatorConfig(), "2026-01-01T00:00:00Z")
    assert decision.invalid
    told = [decision.invalid, str(decision.status), *(e.message for e in decision.events)]
    assert not [t for t in told if MARKER in t]

    checked = Analysis.model_construct(
        prometheus=PrometheusSource.model_construct(address=address),
        interval_seconds=30,
        min_requests=1,
        slo=None,
    )
    verdict = asyncio.run(
        analyse(
            checked,
            allowed=[address, "http://prometheus.monitoring:9090"],
            model="m",
            canary_revision="r2",
            stable_revision=None,
        )
    )
    assert verdict.inconclusive == "PrometheusNotAllowed"
    assert MARKER not in verdict.reason
