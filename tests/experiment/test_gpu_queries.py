"""The experiment's GPU figures (DCGM exporter) on series shaped as dcgm-exporter writes them
with its Kubernetes pod mapping, evaluated by ``promtool test rules``: each arm gets its own
pods' GPUs, no other Deployment's (a name prefix of another is not a match)."""

from __future__ import annotations

from pathlib import Path

import yaml
from trtops_operator.experiment.prometheus import gpu_queries

from tests.ship.test_dashboard import promtool_test_rules

# (metric, gpu, pod, values every 15 s): an fp16 arm's pod, an int8 arm's pod, and a pod of a
# Deployment whose name starts with the fp16 arm's.
SERIES = [
    ("DCGM_FI_DEV_FB_USED", "0", "bert-r1-cpu-5d8f7c9b4-x2x9z", "2000 3000 2500"),
    ("DCGM_FI_DEV_FB_USED", "1", "bert-r2-cpu-6c7d8e9f5-a1b2c", "900 900 900"),
    ("DCGM_FI_DEV_FB_USED", "2", "bert-r1-cpu-extra-7f8e9d6c5-q1w2e", "9999 9999 9999"),
    ("DCGM_FI_DEV_GPU_UTIL", "0", "bert-r1-cpu-5d8f7c9b4-x2x9z", "60 80 70"),
    ("DCGM_FI_DEV_GPU_UTIL", "1", "bert-r2-cpu-6c7d8e9f5-a1b2c", "20 20 20"),
    ("DCGM_FI_DEV_GPU_UTIL", "2", "bert-r1-cpu-extra-7f8e9d6c5-q1w2e", "99 99 99"),
]


def test_each_arm_gets_its_own_pods_gpu_memory_and_utilisation(tmp_path: Path) -> None:
    arms = {"bert-r1-cpu": (3000, 70), "bert-r2-cpu": (900, 20)}
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": []}))
    tests = []
    for deployment, (memory, util) in arms.items():
        for expr, value in zip(gpu_queries("ml", deployment, 60), (memory, util), strict=True):
            sample = {"labels": "{}", "value": value}
            tests.append({"eval_time": "30s", "expr": expr, "exp_samples": [sample]})
    spec = {
        "rule_files": [str(rules)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {
                        "series": f'{name}{{gpu="{gpu}", namespace="ml", pod="{pod}",'
                        f' container="serve", UUID="GPU-{gpu}"}}',
                        "values": values,
                    }
                    for name, gpu, pod, values in SERIES
                ],
                "promql_expr_test": tests,
            }
        ],
    }
    promtool_test_rules(spec, tmp_path)
