"""Monitoring on the Prometheus Operator (kube-prometheus-stack): the chart's PodMonitor for the
serving pods and ServiceMonitor for the operator, each switchable; both accepted by the real
monitoring.coreos.com CRDs; and the canary analysis reading the series with the labels the
Prometheus Operator's relabelling gives them."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import yaml
from trtops_operator.canary.analysis import Selector
from trtops_operator.canary.prometheus import PrometheusClient
from trtops_operator.canary.runner import measure
from trtops_operator.config import OperatorConfig
from trtops_operator.manifests import Engine, PlanRef, render_deployment
from trtops_operator.models import TrtEngineSpec
from trtops_worker import samples
from trtops_worker.serve.codec import encode_tensor

from tests.ship.conftest import find, helm, render, template_args, tool
from tests.support.prometheus import Prometheus
from tests.support.worker import Server, start_server

MODEL = "conv"


def serving_pod_template() -> dict[str, Any]:
    spec = TrtEngineSpec.model_validate(
        {
            "model": {"uri": "m.onnx"},
            "serving": {"backend": "onnxruntime"},
            "storage": {"claimName": "plans"},
        }
    )
    plan = PlanRef(None, "k" * 64, "/plans/p", "fp32", "onnxruntime")
    deployment = render_deployment(
        Engine("conv", "ml", "u1", spec),
        plan,
        name="conv-cpu",
        revision="r1",
        config=OperatorConfig(worker_image="w:1"),
    )
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_podmonitor_is_off_by_default_and_selects_the_operators_serving_pods() -> None:
    assert find(render(), "PodMonitor") == []
    (monitor,) = find(render(podMonitor__enabled="true"), "PodMonitor")
    pod = serving_pod_template()
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert endpoint["port"] in ports
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (scoped,) = find(
        render(
            podMonitor__enabled="true",
            podMonitor__namespaces="{ml,prod}",
            podMonitor__labels__release="kps",
        ),
        "PodMonitor",
    )
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["ml", "prod"]}
    assert scoped["metadata"]["labels"]["release"] == "kps"


@pytest.mark.cluster
def test_monitors_are_accepted_by_the_prometheus_operator_crds(namespace: str) -> None:
    """Server-side dry run against the PodMonitor/ServiceMonitor CRDs that hack/cluster.sh
    applies from the prometheus-operator Go module; a wrong field is refused, so the check
    has teeth."""
    manifest = helm(
        *template_args(
            namespace, podMonitor__enabled="true", metrics__serviceMonitor__enabled="true"
        )
    ).stdout
    monitors = [
        d
        for d in yaml.safe_load_all(manifest)
        if d and d["kind"] in ("PodMonitor", "ServiceMonitor")
    ]
    assert sorted(d["kind"] for d in monitors) == ["PodMonitor", "ServiceMonitor"]

    def dry_run(docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                tool("kubectl", "hack/cluster.sh env"),
                "apply",
                "--dry-run=server",
                "-n",
                namespace,
                "--validate=strict",
                "-f",
                "-",
            ],
            input=yaml.safe_dump_all(docs),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    proc = dry_run(monitors)
    assert proc.returncode == 0, proc.stderr
    assert "podmonitor.monitoring.coreos.com/t-trtops-serving created" in proc.stdout
    broken = yaml.safe_load(yaml.safe_dump(monitors[0]))
    broken["spec"]["podMetricsEndpoints" if broken["kind"] == "PodMonitor" else "endpoints"][0][
        "interval"
    ] = "soon"
    assert dry_run([broken]).returncode != 0


# --- the analysis on Prometheus Operator labels ------------------------------------------------


def podmonitor_scrape_config(monitor: dict[str, Any], targets_file: Path) -> dict[str, Any]:
    """The scrape config the Prometheus Operator generates for ``monitor``'s first endpoint,
    transcribed from prometheus-operator v0.85.0 ``pkg/prometheus/promcfg.go``
    (``generatePodMonitorConfig``, ``initRelabelings``, ``generateRunningFilter``). Debian's
    Prometheus has no Kubernetes discovery, so the ``__meta_kubernetes_*`` labels come from a
    file written the way ``kubernetes_sd_configs`` (role pod) would fill them."""
    meta, spec = monitor["metadata"], monitor["spec"]
    ep = spec["podMetricsEndpoints"][0]
    relabel: list[dict[str, Any]] = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        {
            "action": "drop",
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "(Failed|Succeeded)",
        },
    ]
    for key in sorted(spec["selector"]["matchLabels"]):
        name = sanitize(key)
        relabel.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_pod_label_{name}",
                    f"__meta_kubernetes_pod_labelpresent_{name}",
                ],
                "regex": f"({spec['selector']['matchLabels'][key]});true",
            }
        )
    relabel += [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": ep["port"],
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        {"target_label": "endpoint", "replacement": ep["port"]},
    ]
    return {
        "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/0",
        "honor_labels": False,
        "metrics_path": ep["path"],
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        "relabel_configs": relabel,
    }


def sanitize(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def sd_targets(
    pod: str, namespace: str, labels: dict[str, str], server: Server
) -> list[dict[str, Any]]:
    """What ``kubernetes_sd_configs`` (role pod) yields for one running pod: a target per
    container port, each with the pod's labels as meta labels."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_name": "serve",
    }
    for key, value in labels.items():
        meta[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
    ports = {"http": server.http_port, "metrics": server.metrics_port}
    return [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {**meta, "__meta_kubernetes_pod_container_port_name": name},
        }
        for name, port in ports.items()
    ]


@dataclass
class OperatorPrometheus(Prometheus):
    """Prometheus configured with the one scrape config the Prometheus Operator would write."""

    scrape: dict[str, Any] | None = None

    def write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": self.scrape_interval},
            "scrape_configs": [self.scrape],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path


def infer(server: Server, n: int) -> None:
    x = np.random.default_rng(0).random((1, 3, 32, 32), np.float32)
    body = orjson.dumps({"inputs": [encode_tensor("input", x, binary=False)[0]]})
    with requests.Session() as s:
        for _ in range(n):
            r = s.post(f"{server.url}/v2/models/{MODEL}/infer", data=body, timeout=30)
            assert r.status_code == 200, r.text


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[dict[str, Server]]:
    samples.save(samples.conv_classifier(width=8), tmp_path / "m.onnx")
    started: dict[str, Server] = {}
    try:
        for rev in ("r1", "r2"):
            started[rev] = start_server(
                tmp_path,
                *("--model", str(tmp_path / "m.onnx"), "--model-name", MODEL),
                *("--revision", rev, "--precision", "fp32", "--intra-op-threads", "1"),
            )
        yield started
    finally:
        for server in started.values():
            server.stop()


def test_analysis_reads_series_labelled_by_the_prometheus_operator(
    workers: dict[str, Server], tmp_path: Path
) -> None:
    """Stable and canary serving pods, plus a build pod whose labels the PodMonitor must not
    select, scraped through the operator's relabelling: the analysis (with the namespace matcher
    the driver adds) counts each revision's requests, and the series carry namespace, pod,
    container, endpoint and the PodMonitor's job."""
    (monitor,) = find(render("monitoring", podMonitor__enabled="true"), "PodMonitor")
    labels = serving_pod_template()["metadata"]["labels"]
    targets_file = tmp_path / "pods.json"
    groups = sd_targets(
        "conv-cpu-r1-abc", "ml", {**labels, "trtops.dev/revision": "r1"}, workers["r1"]
    )
    groups += sd_targets(
        "conv-cpu-r2-def", "ml", {**labels, "trtops.dev/revision": "r2"}, workers["r2"]
    )
    build_labels = {**labels, "trtops.dev/component": "build"}
    groups += sd_targets("trt-build-xyz", "ml", build_labels, workers["r1"])
    targets_file.write_text(orjson.dumps(groups).decode())

    prom = OperatorPrometheus(
        tmp_path / "prom", scrape=podmonitor_scrape_config(monitor, targets_file)
    )
    prom.start()
    try:
        deadline = time.monotonic() + 30
        while len(prom.query("up == 1")) < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
        up = prom.query("up")
        assert sorted(r["metric"]["pod"] for r in up) == ["conv-cpu-r1-abc", "conv-cpu-r2-def"]
        assert {r["metric"]["job"] for r in up} == {"monitoring/t-trtops-serving"}
        infer(workers["r1"], 30)
        infer(workers["r2"], 10)

        async def counts() -> dict[str, float]:
            async with PrometheusClient(prom.url) as client:
                return {
                    rev: (
                        await measure(client, Selector(MODEL, rev, {"namespace": "ml"}), 60)
                    ).requests
                    for rev in ("r1", "r2")
                }

        seen = asyncio.run(counts())
        while (seen["r1"] < 30 or seen["r2"] < 10) and time.monotonic() < deadline + 30:
            time.sleep(0.5)
            seen = asyncio.run(counts())
        assert seen["r1"] >= 30
        assert seen["r2"] >= 10
        (series,) = prom.query(
            "sum by (namespace, pod, container, endpoint, job)"
            ' (trtops_requests_total{revision="r2"})'
        )
        assert series["metric"] == {
            "namespace": "ml",
            "pod": "conv-cpu-r2-def",
            "container": "serve",
            "endpoint": "metrics",
            "job": "monitoring/t-trtops-serving",
        }
    finally:
        prom.stop()
