"""dashboards/trtops-value.json, baseline against optimized: it charts latency, throughput, memory,
output agreement and cost; every query parses (promtool); and the GPU panels (DCGM exporter, and
the worker's NVML gauge), which cannot return data on a machine without a GPU, are run by
``promtool test rules`` on series shaped as their exporters write them, so their join onto
revisions is checked too. Every
other panel returns data from a real Prometheus in tests/e2e_canary/test_shadow_rollback_e2e.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.ship.conftest import REPO
from tests.ship.test_dashboard import (
    assert_no_overlap,
    promtool_check_rules,
    promtool_test_rules,
)

sys.path.insert(0, str(REPO / "dashboards"))
import queries as dq  # dashboards/ is a folder of assets, not a package

BOARD = dq.load(dq.VALUE_DASHBOARD)
QUERIES = dq.queries(BOARD)


def _charting(*metrics: str) -> list[str]:
    return [q.panel for q in QUERIES if q.metrics & set(metrics)]


def test_it_charts_latency_throughput_memory_agreement_and_cost() -> None:
    assert _charting("trtops_request_duration_seconds")  # p50, p99, relative to the baseline
    assert _charting("trtops_requests_total")
    assert _charting("trtops_gpu_memory_used_bytes", "DCGM_FI_DEV_FB_USED")
    assert _charting("trtops_shadow_cosine")
    assert _charting("trtops_shadow_top1_agreed_total")
    assert "Cost per 1M inferences" in _charting("trtops_revision_pod_hourly_cost")
    assert set().union(*(q.metrics for q in QUERIES)) >= dq.DCGM_METRICS
    # The baseline is a variable, FP32 unless the viewer picks another precision.
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert variables["baseline"]["current"]["value"] == "fp32"
    assert any('precision="$baseline"' in q.expr for q in QUERIES)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    assert len({p["id"] for p in BOARD["panels"]}) == len(BOARD["panels"])
    assert_no_overlap(BOARD)


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"trtops:value_panel_{i}", "expr": dq.substitute(q.expr)}
        for i, q in enumerate(QUERIES)
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "value", "rules": rules}]}))
    proc = promtool_check_rules(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


# dcgm-exporter with its Kubernetes pod mapping: one series per GPU, labelled with the pod the GPU
# is attached to (namespace, pod, container), scraped with honorLabels. Two pods: an FP32 one and
# an INT8 one, one GPU each; a third GPU belongs to no serving pod.
DCGM_SERIES = [
    ("DCGM_FI_DEV_GPU_UTIL", "0", "conv-r1-a", "80 80 80"),
    ("DCGM_FI_DEV_GPU_UTIL", "1", "conv-r2-b", "30 30 30"),
    ("DCGM_FI_DEV_GPU_UTIL", "2", "other-x", "99 99 99"),
    ("DCGM_FI_DEV_FB_USED", "0", "conv-r1-a", "4096 4096 4096"),
    ("DCGM_FI_DEV_FB_USED", "1", "conv-r2-b", "1024 1024 1024"),
    ("DCGM_FI_DEV_FB_USED", "2", "other-x", "9999 9999 9999"),
    ("DCGM_FI_DEV_POWER_USAGE", "0", "conv-r1-a", "250 250 250"),
    ("DCGM_FI_DEV_POWER_USAGE", "1", "conv-r2-b", "120 120 120"),
    ("DCGM_FI_DEV_POWER_USAGE", "2", "other-x", "300 300 300"),
]
WORKER_SERIES = [("conv-r1-a", "r1", "fp32"), ("conv-r2-b", "r2", "int8")]
# The worker's own NVML gauge, per GPU of the pod (absent on CPU-only pods).
NVML_SERIES = [
    ("conv-r1-a", "r1", "fp32", "0", "3e9 3e9 3e9"),
    ("conv-r2-b", "r2", "int8", "0", "1e9 1e9 1e9"),
]
EXPECTED = {  # panel title -> (r1 fp32, r2 int8)
    "GPU memory used per revision (worker, NVML)": (3e9, 1e9),
    "GPU utilization (DCGM)": (80, 30),
    "GPU framebuffer used (DCGM)": (4096 * 1048576, 1024 * 1048576),
    "GPU power (DCGM)": (250, 120),
}


def test_gpu_panels_give_each_revisions_gpus_with_promtool(tmp_path: Path) -> None:
    """The panels that need a GPU (DCGM exporter, or the worker's NVML gauge), on series shaped
    as their exporters write them: each revision gets its own pods' GPUs, no other."""
    dcgm = [q for q in QUERIES if q.source in ("dcgm", "gpu")]
    assert {q.panel for q in dcgm} == set(EXPECTED)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dcgm",
                        "rules": [
                            {"record": f"panel_{i}", "expr": dq.substitute(q.expr)}
                            for i, q in enumerate(dcgm)
                        ],
                    }
                ]
            }
        )
    )
    series = [
        {
            "series": f'{name}{{gpu="{gpu}", namespace="ml", pod="{pod}", container="serve",'
            f' modelName="NVIDIA H100 80GB HBM3", UUID="GPU-{gpu}"}}',
            "values": values,
        }
        for name, gpu, pod, values in DCGM_SERIES
    ]
    series += [
        {
            "series": f'trtops_inflight_requests{{namespace="ml", pod="{pod}", model="conv",'
            f' revision="{rev}", precision="{prec}", backend="tensorrt"}}',
            "values": "0 2 1",
        }
        for pod, rev, prec in WORKER_SERIES
    ]
    series += [
        {
            "series": f'trtops_gpu_memory_used_bytes{{namespace="ml", pod="{pod}", model="conv",'
            f' revision="{rev}", precision="{prec}", backend="tensorrt", gpu="{gpu}"}}',
            "values": values,
        }
        for pod, rev, prec, gpu, values in NVML_SERIES
    ]
    tests = [
        {
            "eval_time": "2m",
            "expr": f"panel_{i}",
            "exp_samples": [
                {"labels": f'panel_{i}{{revision="{rev}", precision="{prec}"}}', "value": value}
                for (_, rev, prec), value in zip(WORKER_SERIES, EXPECTED[q.panel], strict=True)
            ],
        }
        for i, q in enumerate(dcgm)
    ]
    promtool_test_rules(
        {
            "rule_files": [str(rules)],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
        },
        tmp_path,
    )
