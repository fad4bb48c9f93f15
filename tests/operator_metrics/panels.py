"""The dashboard's operator panels against a real Prometheus scraping a real operator: the helpers
an end-to-end test uses to have the in-process operator serve its metrics port and to check that
every operator panel's query returns data."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import wait_for
from tests.support.prometheus import Prometheus, free_port

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dashboards"))
import queries as dq  # noqa: E402  # dashboards/ is a folder of assets, not a package


def serve_operator_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Make the in-process operator (KopfRunner) serve its metrics on a free loopback port, as
    ``--metrics-port`` does; returns the Prometheus scrape job for it. Its startup reads the
    environment then, and its cleanup frees the port."""
    port = free_port()
    monkeypatch.setenv("TRTOPS_METRICS_PORT", str(port))
    monkeypatch.setenv("TRTOPS_METRICS_ADDRESS", "127.0.0.1")
    return {"trtops-operator": [f"127.0.0.1:{port}"]}


def _has_data(rows: list[dict[str, Any]]) -> bool:
    """Rows with a number: histogram_quantile over no observations gives NaN, which is no data."""
    return any(math.isfinite(float(r["value"][1])) for r in rows)


def operator_panels(prom: Prometheus, namespace: str, engine: str) -> dict[str, list[Any]]:
    """Every operator panel's query, with the dashboard's variables set to this engine -> rows."""
    variables = {"namespace": namespace, "model": engine}
    return {
        f"{q.panel} ({q.ref_id})": prom.query(dq.substitute(q.expr, variables))
        for q in dq.queries()
        if q.source == "operator"
    }


def wait_operator_panels(
    prom: Prometheus, namespace: str, engine: str, timeout: float = 30
) -> dict[str, list[Any]]:
    """Every operator panel returns data (Prometheus scrapes every second; give it a few)."""
    missing: list[str] = []

    def all_have_data() -> dict[str, list[Any]] | None:
        nonlocal missing
        results = operator_panels(prom, namespace, engine)
        assert len(results) >= 6, sorted(results)
        missing = [panel for panel, rows in results.items() if not _has_data(rows)]
        return None if missing else results

    try:
        return wait_for(all_have_data, timeout=timeout, what="every operator panel to have data")
    except TimeoutError as exc:
        raise AssertionError(f"operator panels without data: {missing}") from exc


def value(prom: Prometheus, promql: str) -> float | None:
    """The single value of an instant query (None when it returns nothing)."""
    rows = prom.query(promql)
    assert len(rows) <= 1, rows
    return float(rows[0]["value"][1]) if rows else None
