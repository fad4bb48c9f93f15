"""The whole local stack for end-to-end runs (tests, benchmarks, the demo): a claim filled with
sample models and data, a TrtEngine whose build and serving pods land on the local node agent,
traffic through the local gateway, and readers for what the operator reports."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from trtops_worker import samples

from tests.support.cluster import kubectl, stop_process, wait_for

# Model files the claim holds, and how to make them.
MODELS = {
    "models/conv.onnx": lambda: samples.conv_classifier(),
    # ~50x the compute of conv.onnx on the same input: a genuinely slower revision.
    "models/conv-heavy.onnx": lambda: samples.conv_classifier(width=64, depth=6),
}


def fill_claim(root: Path) -> None:
    """Sample models plus calibration and validation data, as a user would upload them."""
    for rel, make in MODELS.items():
        samples.save(make(), root / rel)
    conv = samples.conv_classifier()
    (root / "data").mkdir(parents=True, exist_ok=True)
    np.savez(root / "data" / "calib.npz", **samples.calibration_inputs(conv, 64, seed=1))
    np.savez(root / "data" / "val.npz", **samples.calibration_inputs(conv, 64, seed=2))
    np.savez(root / "data" / "request.npz", **samples.calibration_inputs(conv, 1, seed=3))


def engine_manifest(
    name: str,
    *,
    node: str,
    prometheus_url: str,
    model: str = "models/conv.onnx",
    precision: str = "fp32",
    steps: list[dict[str, Any]] | None = None,
    interval_seconds: int = 10,
    failure_limit: int = 2,
    min_requests: int = 20,
    slo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TrtEngine served by ONNX Runtime on the agent's node, rolled out through an HTTPRoute."""
    return {
        "apiVersion": "trtops.dev/v1alpha1",
        "kind": "TrtEngine",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model},
            "build": {
                "precision": precision,
                "nodeSelector": {"trtops.dev/node-agent": node},
                "accuracy": {"validation": {"uri": "data/val.npz"}, "minTop1Agreement": 0.9},
            },
            "storage": {"claimName": "plans"},
            "serving": {
                "backend": "onnxruntime",
                "replicas": 1,
                "nodeSelector": {"trtops.dev/node-agent": node},
            },
            "rollout": {
                "trafficRouter": {"gatewayAPI": {"httpRoute": name}},
                "steps": steps or [{"setWeight": 50, "pauseSeconds": 10}],
                "analysis": {
                    "prometheus": {"address": prometheus_url},
                    "intervalSeconds": interval_seconds,
                    "failureLimit": failure_limit,
                    "minRequests": min_requests,
                    "slo": slo or {"maxLatencyRatioToStable": 2.0, "maxErrorRate": 0.05},
                },
            },
        },
    }


def http_route_manifest(name: str) -> str:
    """The user's route: everything to the engine's Service; the operator adds the canary."""
    return json.dumps(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {"rules": [{"backendRefs": [{"name": name, "port": 8000, "weight": 100}]}]},
        }
    )


def apply(namespace: str, obj: dict[str, Any] | str) -> None:
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=obj if isinstance(obj, str) else json.dumps(obj),
    )


def engine(namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        kubectl("get", "trtengine", name, "-n", namespace, "-o", "json")
    )
    return result


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(
        (c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == type_), {}
    )


def route_weights(namespace: str, name: str) -> dict[str, int]:
    route = json.loads(kubectl("get", "httproute", name, "-n", namespace, "-o", "json"))
    refs = route["spec"]["rules"][0].get("backendRefs") or []
    return {r["name"]: int(r.get("weight", 1)) for r in refs}


def wait_stable(namespace: str, name: str, *, timeout: float = 180) -> dict[str, Any]:
    """Wait until the engine is Ready with its current revision stable at 100%."""

    def settled() -> dict[str, Any] | None:
        obj = engine(namespace, name)
        st = obj.get("status", {})
        if condition(obj, "Built").get("reason") not in (None, "Built", "Building"):
            raise AssertionError(f"build failed: {condition(obj, 'Built')}")
        stable = st.get("stable") or {}
        ok = (
            condition(obj, "Ready").get("status") == "True"
            and stable.get("revision") == st.get("revision")
            and st.get("observedGeneration") == obj["metadata"]["generation"]
        )
        return obj if ok else None

    return wait_for(settled, timeout=timeout, interval=0.5, what=f"{name} to be Ready and stable")


@dataclass
class Traffic:
    """``trtops-worker bench`` driving OIP v2 requests through the gateway in the background."""

    process: subprocess.Popen[bytes]
    report: Path

    def stop(self) -> None:
        stop_process(self.process, grace=10)


@contextlib.contextmanager
def traffic(
    url: str,
    model: str,
    input_file: Path,
    workdir: Path,
    *,
    concurrency: int = 2,
    seconds: int = 600,
) -> Iterator[Traffic]:
    report = workdir / f"bench-{time.monotonic_ns()}.json"
    with (workdir / "bench.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                "trtops-worker",
                "bench",
                "--url",
                url,
                "--model",
                model,
                "--concurrency",
                str(concurrency),
                "--duration-seconds",
                str(seconds),
                "--input-file",
                str(input_file),
                "--json",
                str(report),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
    t = Traffic(proc, report)
    try:
        yield t
    finally:
        t.stop()
