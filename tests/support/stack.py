"""The whole local stack for end-to-end runs (tests, benchmarks, the demo): a claim filled with
sample models and data, a TrtEngine whose build and serving pods land on the local node agent,
traffic through the local gateway, and readers for what the operator reports.

:func:`local_stack` brings all of it up on a running cluster for the demo and the canary
benchmark (the tests get the same pieces from pytest fixtures), and takes it down again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from trtops_worker import samples

from tests.support.cluster import REPO, export_cluster_env, kubectl, stop_process, wait_for
from tests.support.gateway import start_gateway, stats
from tests.support.node_agent_process import NodeAgentHandle, start_node_agent
from tests.support.prometheus import Prometheus


def _renamed_input(model: Any, name: str) -> Any:
    """``model`` with its input ``input`` renamed: a schema break for every existing client."""
    for node in model.graph.node:
        node.input[:] = [name if i == "input" else i for i in node.input]
    model.graph.input[0].name = name
    return model


# Model files the claim holds, and how to make them.
MODELS = {
    "models/conv.onnx": lambda: samples.conv_classifier(),
    # ~50x the compute of conv.onnx on the same input: a genuinely slower revision.
    "models/conv-heavy.onnx": lambda: samples.conv_classifier(width=64, depth=6),
    # conv.onnx with its input renamed to "pixels": requests naming "input" are answered 400.
    "models/conv-renamed.onnx": lambda: _renamed_input(samples.conv_classifier(), "pixels"),
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
    judge: dict[str, Any] | None = None,
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
                    "slo": slo or {"maxErrorRate": 0.05},
                    # 1.5x: the same model on two pods of this busy 2-core node differs by up
                    # to ~1.3x over short windows (BENCHMARKS.md, Rollout judgement).
                    "judge": judge or {"minLatencyEffect": 1.5},
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
            # The route opts in to the engine of that name moving its weights.
            "metadata": {"name": name, "annotations": {"trtops.dev/engine": name}},
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
            # Its own session: Ctrl-C reaches only the caller, whose clean-up stops it.
            start_new_session=True,
        )
    t = Traffic(proc, report)
    try:
        yield t
    finally:
        t.stop()


def wait_for_backend(url: str, *, timeout: float = 30) -> None:
    """Wait until the gateway at ``url`` routes to a ready endpoint with a non-zero weight."""
    wait_for(
        lambda: any(weight > 0 and endpoints for _, weight, endpoints in stats(url)["backends"]),
        timeout=timeout,
        what=f"the gateway {url} to see a ready backend",
    )


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that every clean-up runs, as after Ctrl-C."""


def raise_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Interrupted` in the main thread (``kill`` cleans up too)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _quiet(text: str) -> None:
    """The default narrator of :func:`local_stack`: says nothing."""


@dataclass
class LocalStack:
    """What :func:`local_stack` started: use it inside the ``with`` block only."""

    workdir: Path
    namespace: str
    agent: NodeAgentHandle
    prometheus: Prometheus
    operator: subprocess.Popen[bytes]
    claim: Path
    exit: contextlib.ExitStack
    say: Callable[[str], None] = _quiet
    gateway_url: str = ""

    @property
    def node(self) -> str:
        return self.agent.node

    def gateway(self, route: str) -> str:
        """Start the local gateway following HTTPRoute ``route`` (once) and wait until it sees a
        ready backend; return its URL. Call it once the route's engine serves."""
        if not self.gateway_url:
            self.gateway_url = self.exit.enter_context(
                start_gateway(httproute=f"{self.namespace}/{route}", log_dir=self.workdir)
            )
            self.say(f"    gateway {self.gateway_url} follows HTTPRoute {self.namespace}/{route}")
        wait_for_backend(self.gateway_url)
        return self.gateway_url

    def traffic(self, model: str, *, seconds: int, concurrency: int = 2) -> Traffic:
        """Background ``trtops-worker bench`` through the gateway with the claim's one request
        (``data/request.npz``); stopped when the stack is, or earlier with ``.stop()``."""
        if not self.gateway_url:
            raise RuntimeError("start the gateway before the traffic")
        t = self.exit.enter_context(
            traffic(
                self.gateway_url,
                model,
                self.claim / "data" / "request.npz",
                self.workdir,
                concurrency=concurrency,
                seconds=seconds,
            )
        )
        self.say(
            f"    background traffic: trtops-worker bench --concurrency {concurrency} "
            f"(pid {t.process.pid}, log {self.workdir / 'bench.log'})"
        )
        return t


def _delete_namespace(
    namespace: str, claim: str, agent: NodeAgentHandle, say: Callable[[str], None]
) -> None:
    say(f"    deleting namespace {namespace}")
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    # The operator, stopped before this, would remove its finalizers (trtops.dev/route-cleanup):
    # without it a TrtEngine kept the namespace Terminating for good, one per run on a kept
    # cluster. What they guard goes with the namespace.
    for engine in kubectl("get", "trtengines", "-n", namespace, "-o", "name", check=False).split():
        kubectl(
            "patch", engine, "-n", namespace, "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip
    kubectl("delete", "pv", f"{namespace}-{claim}"[:63], "--wait=false", check=False)
    # Let the node agent stop the namespace's pods while it still runs.
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and agent.process.poll() is None
        and kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).strip()
    ):
        time.sleep(0.5)


@contextlib.contextmanager
def local_stack(
    workdir: Path,
    *,
    namespace: str,
    node: str,
    claim: str = "plans",
    fill: Callable[[Path], object] = fill_claim,
    watch_timeout_seconds: int = 5,
    say: Callable[[str], None] = _quiet,
) -> Iterator[LocalStack]:
    """Everything a canary needs on the running cluster: the TrtEngine CRD, a local node agent
    (Node ``node``) that runs the operator's pods as processes, Prometheus discovering the
    annotated pods, namespace ``namespace`` with a bound claim ``claim`` that ``fill`` fills,
    and ``trtops-operator`` watching that namespace (log in ``workdir/operator.log``). The gateway
    and background traffic are started later through the yielded :class:`LocalStack`.

    On leaving the block, also by an exception, Ctrl-C or (with :func:`raise_on_sigterm`) SIGTERM,
    all of it is stopped in reverse order: traffic, gateway, operator, the namespace and its
    PersistentVolume (waiting for the agent to stop their pods), Prometheus, the node agent.
    """
    export_cluster_env()
    with contextlib.ExitStack() as exit_stack:
        kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(REPO / "crds" / "trtops.dev_trtengines.yaml"),
        )
        kubectl("wait", "--for=condition=Established", "crd/trtengines.trtops.dev", "--timeout=60s")
        agent = exit_stack.enter_context(start_node_agent(workdir / "agent", node=node))
        say(f"    node agent: Node {agent.node} runs the pods bound to it as local processes")
        prom = Prometheus(workdir=workdir / "prometheus", discover_pods=True)
        exit_stack.callback(prom.stop)
        prom.start()
        say(f"    Prometheus: {prom.url} (scrapes annotated pods)")

        kubectl("create", "namespace", namespace)
        exit_stack.callback(_delete_namespace, namespace, claim, agent, say)
        claim_dir = agent.create_claim(namespace, claim)
        fill(claim_dir)
        files = sorted(str(p.relative_to(claim_dir)) for p in claim_dir.rglob("*") if p.is_file())
        say(f"    namespace {namespace}; claim {claim} = {claim_dir}")
        say(f"      {', '.join(files)}")

        log = exit_stack.enter_context((workdir / "operator.log").open("ab"))
        operator = subprocess.Popen(
            ["trtops-operator", "-n", namespace, "--metrics-port", "0", "--liveness", ""],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "TRTOPS_WATCH_TIMEOUT_SECONDS": str(watch_timeout_seconds),
                "TRTOPS_PROMETHEUS_ADDRESSES": prom.url,  # the installer's allowlist
            },
            start_new_session=True,
        )
        exit_stack.callback(stop_process, operator, 20)
        say(
            f"    operator: trtops-operator -n {namespace} (pid {operator.pid}, "
            f"log {workdir / 'operator.log'})"
        )
        yield LocalStack(workdir, namespace, agent, prom, operator, claim_dir, exit_stack, say)
