"""The PromQL of every panel in ``dashboards/trtops.json`` (serving and rollouts) and
``dashboards/trtops-value.json`` (baseline against optimized: latency, throughput, output
agreement, cost, GPU), for tests that check the queries parse (promtool) and return data from a
real Prometheus scraping real workers.

Each query is classified by the metrics it reads, because not every metric exists everywhere:
worker metrics exist wherever a worker serves; GPU gauges only where NVML finds a GPU; operator
metrics only where the operator runs (and is scraped with ``honor_labels``: its series carry the
``namespace`` of the engine they describe); DCGM exporter metrics only where NVIDIA's exporter
runs (their panels are checked with promtool only). ``PENDING_OPERATOR_METRICS`` would list
metrics the dashboard charts before the operator exposes them; none today.

Run as a script to print them: ``python dashboards/queries.py [--substitute]``.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DASHBOARD",
    "DCGM_METRICS",
    "GPU_METRICS",
    "OPERATOR_METRICS",
    "PENDING_OPERATOR_METRICS",
    "SHADOW_METRICS",
    "VALUE_DASHBOARD",
    "WORKER_METRICS",
    "Query",
    "load",
    "queries",
    "substitute",
]

DASHBOARD = Path(__file__).resolve().parent / "trtops.json"
VALUE_DASHBOARD = Path(__file__).resolve().parent / "trtops-value.json"

# Fixed names: trtops_worker.serve.metrics (histograms expose _bucket/_sum/_count).
WORKER_METRICS = frozenset({
    "trtops_request_duration_seconds",
    "trtops_queue_duration_seconds",
    "trtops_compute_duration_seconds",
    "trtops_requests_total",
    "trtops_batch_size",
    "trtops_inflight_requests",
    "trtops_queue_depth",
    "trtops_backend_fallback",
})
# trtops_worker.serve.shadow: output agreement of the candidate with stable, per revision pair.
SHADOW_METRICS = frozenset({
    "trtops_shadow_requests_total",
    "trtops_shadow_cosine",
    "trtops_shadow_top1_compared_total",
    "trtops_shadow_top1_agreed_total",
    "trtops_shadow_max_abs_error",
})
# NVIDIA DCGM exporter (dcgm-exporter's default counters), per GPU with the pod it is attached to.
DCGM_METRICS = frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"})
GPU_METRICS = frozenset({"trtops_gpu_memory_used_bytes", "trtops_gpu_utilization_ratio"})
# What trtops_operator.metrics exposes (tests/ship/test_dashboard.py checks against it).
OPERATOR_METRICS = frozenset({
    "trtops_reconciles_total",
    "trtops_reconcile_errors_total",
    "trtops_builds_total",
    "trtops_reconcile_duration_seconds",
    "trtops_build_duration_seconds",  # histogram, per finished build
    "trtops_plan_top1_agreement",  # gauge, accuracy gate: top-1 agreement with FP32
    "trtops_plan_mean_abs_error",  # gauge, accuracy gate: mean absolute error against FP32
    "trtops_canary_weight",  # gauge, traffic weight (percent) the operator set per revision/role
    "trtops_revision_pod_hourly_cost",  # gauge, price of one serving pod per hour (cost.py)
})
# Charted by the dashboard, not yet exposed by the operator: such panels would stay empty
# (their titles must say "pending operator metric"). Empty since the operator has them all.
PENDING_OPERATOR_METRICS: frozenset[str] = frozenset()

# Values the variables take in the tests (and "All" in Grafana): match everything;
# ``$__range`` is the dashboard's time range.
DEFAULT_VARIABLES = {
    "namespace": ".*",
    "model": ".*",
    "revision": ".*",
    "__rate_interval": "1m",
    "__range": "1h",
    "baseline": "fp32",
}

_KNOWN = (
    WORKER_METRICS
    | SHADOW_METRICS
    | GPU_METRICS
    | OPERATOR_METRICS
    | PENDING_OPERATOR_METRICS
    | DCGM_METRICS
)
_METRIC = re.compile(r"\b(trtops_[a-z0-9_]+?|DCGM_FI_[A-Z0-9_]+)(?:_bucket|_sum|_count)?\b")


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str

    @property
    def metrics(self) -> frozenset[str]:
        found = set()
        for name in _METRIC.findall(self.expr):
            for base in (name, re.sub(r"_(bucket|sum|count)$", "", name)):
                if base in _KNOWN:
                    found.add(base)
        return frozenset(found)

    @property
    def source(self) -> str:
        """``worker``, ``gpu``, ``operator``, ``dcgm`` or ``pending`` (the most demanding metric
        wins)."""
        m = self.metrics
        if m & PENDING_OPERATOR_METRICS:
            return "pending"
        if m & DCGM_METRICS:
            return "dcgm"
        if m & OPERATOR_METRICS:
            return "operator"
        if m & GPU_METRICS:
            return "gpu"
        return "worker"


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))  # collapsed rows nest their panels
    return out


def queries(dashboard: dict[str, Any] | None = None) -> list[Query]:
    """Every target of every panel, in dashboard order."""
    board = load() if dashboard is None else dashboard
    return [
        Query(panel["title"], target["refId"], target["expr"])
        for panel in _panels(board["panels"])
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana variables (``$x``, ``${x}``, ``[[x]]``) with plain values."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no value for Grafana variable {name!r} in {expr!r}")
        return values[name]

    # ``$1`` (a label_replace group reference) is no variable: Grafana leaves it as written.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$([A-Za-z_]\w*)", repl, expr)


if __name__ == "__main__":
    plain = "--substitute" in sys.argv[1:]
    for q in queries() + queries(load(VALUE_DASHBOARD)):
        print(f"[{q.source}] {q.panel} ({q.ref_id}): {substitute(q.expr) if plain else q.expr}")
