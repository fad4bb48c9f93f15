"""dashboards/trtops.json: valid, every panel's PromQL parses (promtool), the fixed worker metrics
are all charted, the operator metrics it charts are the ones the operator exposes; and, against a
real worker scraped by a real Prometheus, every worker panel returns data (the operator panels
return data in tests/e2e_canary, where a real operator is scraped)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ship.conftest import REPO, tool
from tests.support.worker import start_server

sys.path.insert(0, str(REPO / "dashboards"))
import queries as dq  # dashboards/ is a folder of assets, not a package

BOARD = dq.load()


def test_dashboard_shape() -> None:
    assert BOARD["schemaVersion"] >= 39
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "model", "revision"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = [p for p in BOARD["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in BOARD["panels"]}) == len(BOARD["panels"])
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)


def test_panels_do_not_overlap() -> None:
    assert_no_overlap(BOARD)


def assert_no_overlap(board: dict[str, Any]) -> None:
    """Every panel of ``board`` fits the 24-column grid and no two share a cell."""
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_worker_metric_is_charted() -> None:
    charted = set().union(*(q.metrics for q in dq.queries(BOARD)))
    required = dq.WORKER_METRICS | dq.GPU_METRICS
    assert required <= charted


def test_latency_is_per_revision_and_precision_from_histograms() -> None:
    by_title = {q.panel: q.expr for q in dq.queries(BOARD)}
    for phi, title in (("0.99", "p99 latency"), ("0.5", "p50 latency")):
        assert by_title[title].startswith(
            f"histogram_quantile({phi}, sum by (le, revision, precision) "
            "(rate(trtops_request_duration_seconds_bucket{"
        )
        assert "[$__rate_interval]" in by_title[title]


def test_pending_metrics_only_in_panels_marked_pending() -> None:
    for q in dq.queries(BOARD):
        assert (q.source == "pending") == ("pending operator metric" in q.panel), q.panel


def _operator_exposes() -> set[str]:
    """Metric names as ``trtops_operator.metrics`` exposes them (counters with ``_total``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics import MetricWrapperBase
    from trtops_operator import metrics

    registry = CollectorRegistry()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase | metrics.EngineCollector):
            registry.register(value)
    text = generate_latest(registry).decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return {n for n in names if not n.endswith("_created")}  # prometheus_client's timestamps


def test_operator_panels_chart_what_the_operator_exposes() -> None:
    exposed = _operator_exposes()
    assert exposed == set(dq.OPERATOR_METRICS)
    assert not dq.PENDING_OPERATOR_METRICS & exposed, "exposed now: move them to OPERATOR_METRICS"
    charted = set().union(*(q.metrics for q in dq.queries(BOARD) if q.source == "operator"))
    assert charted <= exposed
    # The state the operator reports per engine is on the dashboard.
    assert {
        "trtops_build_duration_seconds",
        "trtops_plan_top1_agreement",
        "trtops_plan_mean_abs_error",
        "trtops_canary_weight",
        "trtops_builds_total",
    } <= charted


def test_substitute_refuses_unknown_variables() -> None:
    assert dq.substitute('x{a=~"$model"}[$__rate_interval]') == 'x{a=~".*"}[1m]'
    with pytest.raises(KeyError, match="cluster"):
        dq.substitute('x{a=~"$cluster"}')


def promtool_check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool", "apt-get install prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def promtool_test_rules(spec: dict[str, Any], folder: Path) -> None:
    """Run ``promtool test rules`` on ``spec`` (a unit-test file's content, written to
    ``folder``); fail with promtool's output unless every test passed."""
    path = folder / "promtool-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(
        [tool("promtool", "apt-get install prometheus"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"trtops:dashboard_panel_{i}", "expr": dq.substitute(q.expr)}
                    for i, q in enumerate(dq.queries(BOARD))
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool_check_rules(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules['groups'][0]['rules'])} rules found" in proc.stdout


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: a query with a missing parenthesis does not pass."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [
                            {
                                "record": "x:y",
                                "expr": "sum by (le (rate(trtops_requests_total[1m]))",
                            }
                        ],
                    }
                ]
            }
        )
    )
    proc = promtool_check_rules(path)
    assert proc.returncode != 0


# --- a real worker, a real Prometheus ---------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`trtops-worker serve` on the small conv sample (ONNX Runtime, dynamic batching)."""
    from trtops_worker import samples

    model = samples.save(samples.conv_classifier(width=8, depth=1), tmp_path / "conv.onnx")
    server = start_server(
        tmp_path,
        "--model",
        str(model),
        "--model-name",
        "conv",
        "--revision",
        "r1",
        "--precision",
        "fp32",
        "--max-batch-size",
        "4",
        "--max-queue-delay-us",
        "2000",
        "--intra-op-threads",
        "1",
    )
    try:
        yield {"url": server.url, "metrics": f"127.0.0.1:{server.metrics_port}"}
    finally:
        server.stop()


def _traffic(url: str, requests_total: int = 120) -> None:
    import requests

    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 3, 32, 32],
                "datatype": "FP32",
                "data": [0.5] * (3 * 32 * 32),
            }
        ]
    }
    infer = f"{url}/v2/models/conv/infer"

    def one(_: int) -> int:
        return requests.post(infer, data=json.dumps(body), timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one, range(requests_total)))
    assert codes.count(200) == requests_total
    bad = requests.post(infer, json={"inputs": [{"name": "nope"}]}, timeout=10)
    assert bad.status_code == 400  # a client_error sample too


@pytest.mark.slow
def test_every_worker_panel_returns_data_from_a_real_prometheus(
    worker: dict[str, Any], prometheus: Callable[[dict[str, list[str]]], Any]
) -> None:
    server = prometheus({"trtops-worker": [worker["metrics"]]})
    worker_queries = [q for q in dq.queries(BOARD) if q.source == "worker"]
    assert len(worker_queries) >= 12
    missing: list[str] = []
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        _traffic(worker["url"], 40)  # keep rates non-zero while scrapes accumulate
        missing = [
            f"{q.panel} ({q.ref_id})"
            for q in worker_queries
            if not server.query(dq.substitute(q.expr))
        ]
        if not missing:
            break
        time.sleep(1)
    assert missing == []
