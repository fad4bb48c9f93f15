"""Analysis against a real Prometheus (1 s scrapes) scraping real ``trtops-worker serve``
processes on ONNX Runtime: stable ``r1`` serves a small conv model, canary ``r2`` a heavier one
on this CPU, under the same model name, as a slower precision or model would. A
``prometheus_client`` exporter stands in where exact outcome counts are needed (error rate)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from trtops_operator.canary.analysis import RevisionMetrics, Selector
from trtops_operator.canary.prometheus import PrometheusClient, PrometheusError
from trtops_operator.canary.runner import analyse, measure
from trtops_operator.models import Analysis
from trtops_worker import samples

from tests.support.prometheus import Prometheus, free_port
from tests.support.worker import start_server

MODEL = "resnet"
WINDOW = 30


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    http: int
    metrics: int
    image_size: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.metrics}"

    def infer(self, n: int, threads: int = 4) -> None:
        x = np.random.default_rng(0).random((1, 3, self.image_size, self.image_size), np.float32)
        body = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
        url = f"http://127.0.0.1:{self.http}/v2/models/{MODEL}/infer"

        def one(_: int) -> int:
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                return int(resp.status)

        with ThreadPoolExecutor(threads) as pool:
            assert set(pool.map(one, range(n))) == {200}


def start_worker(tmp: Path, model: Path, revision: str, image_size: int) -> Worker:
    server = start_server(
        tmp,
        "--model",
        str(model),
        "--model-name",
        MODEL,
        "--revision",
        revision,
        "--precision",
        "fp32",
        "--intra-op-threads",
        "1",
    )
    return Worker(server.process, server.http_port, server.metrics_port, image_size)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    tmp = tmp_path_factory.mktemp("canary-workers")
    samples.save(samples.conv_classifier(width=8), tmp / "fast.onnx")
    samples.save(samples.conv_classifier(width=64, depth=4, image_size=64), tmp / "slow.onnx")
    started: dict[str, Worker] = {}
    try:
        started["r1"] = start_worker(tmp, tmp / "fast.onnx", "r1", 32)
        started["r2"] = start_worker(tmp, tmp / "slow.onnx", "r2", 64)
        yield started
    finally:
        for w in started.values():
            w.process.terminate()
            try:
                w.process.wait(15)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait(5)


PromFactory = Callable[[dict[str, list[str]]], Prometheus]


def wait_scraped(prom: Prometheus, targets: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len([r for r in prom.query("up == 1")]) >= targets:
            return
        time.sleep(0.25)
    raise TimeoutError("targets never came up")


def measure_until(
    url: str, selector: Selector, ok: Callable[[RevisionMetrics], bool]
) -> RevisionMetrics:
    """Poll until Prometheus has scraped what was sent (bounded)."""

    async def once() -> RevisionMetrics:
        async with PrometheusClient(url) as client:
            return (await measure(client, selector, WINDOW)).metrics()

    deadline = time.monotonic() + 25
    m = asyncio.run(once())
    while not ok(m) and time.monotonic() < deadline:
        time.sleep(0.5)
        m = asyncio.run(once())
    return m


def analysis(url: str, **slo: float) -> Analysis:
    return Analysis.model_validate(
        {"prometheus": {"address": url}, "intervalSeconds": 10, "minRequests": 20, "slo": slo}
    )


def test_per_revision_metrics_and_ratio_breach(
    workers: dict[str, Worker], prometheus: PromFactory
) -> None:
    prom = prometheus({"serve": [workers["r1"].target, workers["r2"].target]})
    wait_scraped(prom, 2)
    workers["r1"].infer(120)
    workers["r2"].infer(40)
    # increase() extrapolates the sampled span to the window's end: right after a burst on a
    # fresh Prometheus (a span of 2-3 s) that inflates counts by up to ~50 %; it fades as the
    # span grows (in a cluster the span is the whole window: a few %). Poll until it has.
    # The request counter and the latency histogram are separate series: wait for both.
    stable = measure_until(
        prom.url, Selector(MODEL, "r1"), lambda m: 108 <= m.requests <= 140 and m.p99_ms is not None
    )
    canary = measure_until(
        prom.url, Selector(MODEL, "r2"), lambda m: 36 <= m.requests <= 47 and m.p99_ms is not None
    )
    assert stable.requests == pytest.approx(120, rel=0.2)
    assert canary.requests == pytest.approx(40, rel=0.2)
    assert stable.error_rate == 0.0
    assert canary.error_rate == 0.0
    assert stable.qps is not None
    assert stable.qps > 0
    assert stable.p99_ms is not None
    assert canary.p99_ms is not None
    assert stable.p50_ms is not None
    assert stable.p50_ms <= stable.p99_ms
    print(
        f"stable p50 {stable.p50_ms:.2f} p99 {stable.p99_ms:.2f} ms;"
        f" canary p50 {canary.p50_ms} p99 {canary.p99_ms:.2f} ms"
    )
    assert canary.p99_ms > 1.5 * stable.p99_ms  # the heavier model really is slower here

    verdict = asyncio.run(
        analyse(
            analysis(prom.url, maxLatencyRatioToStable=1.5),
            allowed=[prom.url],
            model=MODEL,
            canary_revision="r2",
            stable_revision="r1",
        )
    )
    assert verdict.kind == "Failed"
    assert [b.slo for b in verdict.breaches] == ["maxLatencyRatioToStable"]
    assert "canary/stable p99 ratio" in verdict.reason
    # The same comparison the other way round passes: the fast revision as the canary.
    ok = asyncio.run(
        analyse(
            analysis(prom.url, maxLatencyRatioToStable=1.5),
            allowed=[prom.url],
            model=MODEL,
            canary_revision="r1",
            stable_revision="r2",
        )
    )
    assert ok.kind == "Passed", ok.reason


def test_no_traffic_is_insufficient_data(
    workers: dict[str, Worker], prometheus: PromFactory
) -> None:
    prom = prometheus({"serve": [workers["r1"].target, workers["r2"].target]})
    wait_scraped(prom, 2)
    time.sleep(2.5)  # a few scrapes of idle counters: the series exist, their increase is 0
    for canary in ("r2", "never-deployed"):
        v = asyncio.run(
            analyse(
                analysis(prom.url, p99LatencyMs=1),
                allowed=[prom.url],
                model=MODEL,
                canary_revision=canary,
                stable_revision="r1",
            )
        )
        assert v.kind == "InsufficientData", (canary, v)
        assert v.canary is not None
        assert v.canary.requests == 0


def test_prometheus_down_is_inconclusive(prometheus: PromFactory) -> None:
    prom = prometheus({})
    prom.stop()
    v = asyncio.run(
        analyse(
            analysis(prom.url, p99LatencyMs=1),
            allowed=[prom.url],
            model=MODEL,
            canary_revision="r2",
            stable_revision="r1",
        )
    )
    assert (v.kind, v.inconclusive) == ("Inconclusive", "PrometheusUnreachable")
    assert prom.url.removeprefix("http://") in v.reason


def test_query_error_and_timeout_are_typed(prometheus: PromFactory) -> None:
    prom = prometheus({})

    async def bad_query() -> None:
        async with PrometheusClient(prom.url) as client:
            await client.query("sum(rate(x[5m])")

    with pytest.raises(PrometheusError) as err:
        asyncio.run(bad_query())
    assert err.value.reason == "QueryError"
    assert "bad_data" in err.value.message

    async def silent_server() -> PrometheusError:
        writers: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)  # read the request, never answer

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with PrometheusClient(f"http://127.0.0.1:{port}", timeout_seconds=0.5) as c:
                await c.query("up")
        except PrometheusError as exc:
            return exc
        finally:
            for w in writers:
                w.close()
                await w.wait_closed()
            server.close()
            await server.wait_closed()
        raise AssertionError("no error")

    assert asyncio.run(silent_server()).reason == "PrometheusTimeout"


def test_error_rate_counts_server_errors_and_rejections(prometheus: PromFactory) -> None:
    registry = CollectorRegistry()
    requests = Counter(
        "trtops_requests",
        "x",
        ["model", "revision", "precision", "backend", "outcome"],
        registry=registry,
    )
    labels = {"model": MODEL, "revision": "r9", "precision": "int8", "backend": "onnxruntime"}
    for outcome in ("success", "client_error", "server_error", "rejected"):
        requests.labels(**labels, outcome=outcome)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus({"exporter": [f"127.0.0.1:{port}"]})
        wait_scraped(prom, 1)
        time.sleep(1.5)  # a baseline sample of every series at 0
        requests.labels(**labels, outcome="success").inc(150)
        requests.labels(**labels, outcome="client_error").inc(10)  # the caller's fault: no error
        requests.labels(**labels, outcome="server_error").inc(30)
        requests.labels(**labels, outcome="rejected").inc(10)
        m = measure_until(prom.url, Selector(MODEL, "r9"), lambda m: m.requests >= 190)
        assert m.error_rate == pytest.approx(40 / 200, rel=0.01)
        assert m.client_error_rate == pytest.approx(10 / 200, rel=0.01)  # counted apart
        v = asyncio.run(
            analyse(
                analysis(prom.url, maxErrorRate=0.05),
                allowed=[prom.url],
                model=MODEL,
                canary_revision="r9",
                stable_revision=None,
            )
        )
        assert v.kind == "Failed"
        assert v.breaches[0].slo == "maxErrorRate"
        assert v.breaches[0].measured == pytest.approx(0.2, rel=0.01)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_label_values_with_quotes_query_cleanly(prometheus: PromFactory) -> None:
    """A hostile model name neither breaks the query nor matches other series."""
    prom = prometheus({})
    v = asyncio.run(
        analyse(
            analysis(prom.url),
            allowed=[prom.url],
            model='x"} or vector(1) or {a="',
            canary_revision="r2",
            stable_revision="r1",
        )
    )
    assert v.kind == "InsufficientData"
    assert v.canary is not None
    assert v.canary.requests == 0
