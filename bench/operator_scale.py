"""Operator scale benchmark: N TrtEngines against the local control plane, the real operator.

What it measures (issue 5), with ``trtops-operator`` running as a subprocess:

  (a) time from operator start until every engine is in its steady state
      (``Ready=True``, ``Progressing=False/RolloutComplete``, ``observedGeneration`` current),
  (b) the operator's peak RSS (``VmHWM`` from ``/proc/PID/status``),
  (c) API server requests while idle: ``apiserver_request_total`` from the API server's own
      ``/metrics``, summed by verb, before and after a window with the operator running and
      nothing changing; watches counted apart. The counter has no client label and the cluster
      is shared (controllers, kwok heartbeats, other test runs), so a second window of the same
      length with the operator stopped is the baseline: the difference is the operator's.

How builds finish: kwok runs Job pods but writes no termination message, so a thread here acts
as the kubelet of a build that finished at once: each build pod, as soon as it appears, gets
the worker's success JSON in ``state.terminated.message`` (as ``tests/operator`` does). Engines
are CPU (``backend: onnxruntime``), one serving replica each, pinned to a kwok node made for the
run (the shared nodes hold 440 pods in all). ``--models M`` < N makes engines share build keys.

Targets: (a) < 120 s, (b) < 300 MB, (c) near zero beyond watches. A script, not a test.

Usage::

    python bench/operator_scale.py [--engines 500] [--models 500] [--idle-seconds 60] \
        [--resync-seconds 30] [--cluster trtops-bench] [--json out.json] [--keep]

By default the run gets a cluster of its own (``TRTOPS_CLUSTER=trtops-bench``), created and
deleted by ``hack/cluster.sh``: the API server's counters then hold only this run and the
cluster's own controllers. On a cluster that already runs (``--cluster trtops``), everything the
run creates (namespace, PersistentVolume, ServiceCIDR, kwok node) is removed with bounded waits
unless ``--keep``; the kwok node stays (cordoned) if pods of other namespaces landed on it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "trtops.dev_trtengines.yaml"
GROUP, VERSION, PLURAL = "trtops.dev", "v1alpha1", "trtengines"
BENCH_LABEL = "trtops.dev/bench"
# What the operator reads or writes; the rest of the API server's traffic is the cluster's own.
OPERATOR_RESOURCES = {
    "trtengines",
    "jobs",
    "pods",
    "deployments",
    "services",
    "poddisruptionbudgets",
    "events",
}
T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the cluster --------------------------------------------------------------------------------


def cluster_script(name: str, command: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "hack" / "cluster.sh"), command],
        env={**os.environ, "TRTOPS_CLUSTER": name},
        text=True,
        check=False,
        **kw,
    )


def cluster_env(name: str) -> tuple[dict[str, str], bool]:
    """Start (or reuse) the local cluster ``name``: KUBECONFIG and PATH for it, and whether it
    was already running."""
    existed = cluster_script(name, "status", capture_output=True).returncode == 0
    cluster_script(name, "up", timeout=3600, stdout=subprocess.DEVNULL).check_returncode()
    line = cluster_script(name, "env", capture_output=True).stdout.strip()
    pairs = dict(p.split("=", 1) for p in line.removeprefix("export ").split())
    bin_dir = pairs["PATH"].split(":", 1)[0]
    path = bin_dir + os.pathsep + os.environ["PATH"]
    return {"KUBECONFIG": pairs["KUBECONFIG"], "PATH": path}, existed


class Kube:
    """The few API calls the benchmark makes itself (never during the idle windows)."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        self.client_mod = client
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)

    def apply_crd(self) -> None:
        body = yaml.safe_load(CRD.read_text())
        name = body["metadata"]["name"]
        try:
            current = self.ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            self.ext.replace_custom_resource_definition(name, body)
        except self.client_mod.ApiException as exc:
            if exc.status != 404:
                raise
            self.ext.create_custom_resource_definition(body)

        def established() -> bool:
            crd = self.ext.read_custom_resource_definition(name)
            conds = crd.status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(established, 30, "CRD established")

    def networking(self) -> Any:
        return self.client_mod.NetworkingV1Api(self.api)

    def raw_metrics(self) -> str:
        """The API server's own /metrics (itself one non-resource GET, not counted below)."""
        return subprocess.run(
            ["kubectl", "--request-timeout=30s", "get", "--raw", "/metrics"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout


@dataclass
class Fixture:
    """What the run creates outside the operator: namespace, claim (PV pre-bound), kwok node."""

    kube: Kube
    namespace: str
    node: str
    pv: str
    capacity: int
    service_cidr: str = "10.200.0.0/16"

    def create(self) -> None:
        core = self.kube.core
        # kwokctl's Service range is a /24 (254 ClusterIPs) and every engine has a Service:
        # a ServiceCIDR of the run's own makes room (MultiCIDRServiceAllocator, on since 1.33).
        self.kube.networking().create_service_cidr(
            {"metadata": {"name": self.namespace}, "spec": {"cidrs": [self.service_cidr]}}
        )
        core.create_namespace(
            {"metadata": {"name": self.namespace, "labels": {BENCH_LABEL: "true"}}}
        )
        wait_for(
            lambda: _exists(
                lambda: core.read_namespaced_service_account("default", self.namespace)
            ),
            30,
            "the namespace's default ServiceAccount",
        )
        core.create_node(kwok_node(self.node, self.namespace, self.capacity))
        core.create_persistent_volume(
            {
                "metadata": {"name": self.pv, "labels": {BENCH_LABEL: "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{self.pv}"},  # noqa: S108 - never mounted: kwok
                    "claimRef": {"namespace": self.namespace, "name": "trt-plans"},
                },
            }
        )
        core.create_namespaced_persistent_volume_claim(
            self.namespace,
            {
                "metadata": {"name": "trt-plans"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": self.pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        wait_for(
            lambda: (
                core.read_namespaced_persistent_volume_claim(
                    "trt-plans", self.namespace
                ).status.phase
                == "Bound"
            ),
            60,
            "claim trt-plans bound",
        )

    def cordon(self) -> None:
        """No new pods on the run's node: other runs' pods must not land where we delete."""
        with contextlib.suppress(self.kube.client_mod.ApiException):
            self.kube.core.patch_node(self.node, {"spec": {"unschedulable": True}})

    def delete(self, timeout: float) -> list[str]:
        """Remove everything, waiting at most ``timeout``; returns what was left behind."""
        core, api_exc = self.kube.core, self.kube.client_mod.ApiException
        left: list[str] = []
        self.cordon()
        with contextlib.suppress(api_exc):
            core.delete_namespace(self.namespace, propagation_policy="Background")
        try:
            wait_for(
                lambda: not _exists(lambda: core.read_namespace(self.namespace)),
                timeout,
                f"namespace {self.namespace} gone",
                interval=2,
            )
        except TimeoutError:
            left.append(f"namespace {self.namespace} (still terminating)")
        with contextlib.suppress(api_exc):
            core.delete_persistent_volume(self.pv)
        with contextlib.suppress(api_exc):  # kept by its finalizer until its IPs are released
            self.kube.networking().delete_service_cidr(self.namespace)
        foreign = [
            f"{p.metadata.namespace}/{p.metadata.name}"
            for p in core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node}"
            ).items
            if p.metadata.namespace != self.namespace
        ]
        if foreign:
            left.append(f"node {self.node} (cordoned; pods of others on it: {foreign[:5]})")
        else:
            with contextlib.suppress(api_exc):
                core.delete_node(self.node)
        return left


def _exists(read: Callable[[], Any]) -> bool:
    from kubernetes.client import ApiException

    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def kwok_node(name: str, namespace: str, pods: int) -> dict[str, Any]:
    """A kwok-managed fake node with room for the run's pods (kwok keeps it Ready)."""
    resources = {"cpu": "1000", "memory": "4Ti", "pods": str(pods)}
    return {
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                BENCH_LABEL: namespace,
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "kubeletVersion": "fake",
                "operatingSystem": "linux",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "osImage": "",
                "containerRuntimeVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "phase": "Running",
        },
    }


def engine(name: str, model: str, namespace: str) -> dict[str, Any]:
    pin = {BENCH_LABEL: namespace}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrtEngine",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"models/{model}.onnx"},
            "build": {"precision": "fp32", "nodeSelector": pin},
            "storage": {"claimName": "trt-plans"},
            "serving": {"backend": "onnxruntime", "replicas": 1, "nodeSelector": pin},
        },
    }


def success_result(job: str) -> dict[str, Any]:
    """What ``trtops-worker build`` writes for a CPU build (its ``_result`` shape)."""
    key = hashlib.sha256(job.encode()).hexdigest()
    return {
        "ok": True,
        "key": key,
        "path": f"/plans/{key}",
        "artifact": "model.onnx",
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "precision": "fp32",
        "backend": "onnxruntime",
        "versions": {"onnxruntime": "1.22.0"},
        "device": {"kind": "cpu"},
        "cached": False,
        "buildSeconds": 3.2,
        "accuracy": {"passed": True, "samples": 64, "outputs": {}},
        "benchmark": {
            "batches": [{"batchSize": 1, "p50Ms": 1.1, "p99Ms": 2.4, "throughputPerSecond": 850}]
        },
    }


def follow(
    stop: threading.Event,
    errors: list[str],
    on_event: Callable[[dict[str, Any]], None],
    list_fn: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> None:
    """Hand every watch event of ``list_fn(*args, **kwargs)`` to ``on_event`` until ``stop``;
    the watch is re-opened every 5 s and after an error (errors are reported at the end)."""
    from kubernetes import watch

    while not stop.is_set():
        w = watch.Watch()
        try:
            for event in w.stream(list_fn, *args, timeout_seconds=5, **kwargs):
                on_event(event)
                if stop.is_set():
                    break
        except Exception as exc:
            errors.append(f"watch: {exc}")
            time.sleep(1)
        finally:
            w.stop()


class BuildFinisher:
    """Acts as the kubelet of builds that finish at once: every build pod that appears gets the
    worker's result as its termination message (kwok finishes Job pods without one)."""

    def __init__(self, kube: Kube, namespace: str, workers: int = 4) -> None:
        self.kube, self.namespace = kube, namespace
        self.done: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.in_flight: set[str] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="finish")
        self.thread = threading.Thread(target=self._watch, name="build-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _watch(self) -> None:
        follow(
            self.stop,
            self.errors,
            self._on_pod,
            self.kube.core.list_namespaced_pod,
            self.namespace,
            label_selector="trtops.dev/component=build",
        )

    def _on_pod(self, event: dict[str, Any]) -> None:
        pod = event["object"]
        name = pod.metadata.name
        if _has_result(pod):
            self.done.add(name)
        elif event["type"] != "DELETED" and name not in self.in_flight:
            # kwok's own stages rewrite containerStatuses (and drop the message) when they run
            # after us: write it again, a bounded number of times.
            self.attempts[name] += 1
            if self.attempts[name] <= 5:
                job = (pod.metadata.labels or {}).get("job-name", name)
                self.in_flight.add(name)
                self.pool.submit(self._finish, name, job)

    def _finish(self, pod: str, job: str) -> None:
        terminated = {
            "exitCode": 0,
            "reason": "Completed",
            "message": json.dumps(success_result(job)),
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:00:03Z",
        }
        patch = {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "build",
                        "image": "worker",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        }
        try:
            for attempt in range(5):
                try:
                    self.kube.core.patch_namespaced_pod_status(
                        pod,
                        self.namespace,
                        patch,
                        _content_type="application/strategic-merge-patch+json",
                    )
                    return
                except Exception as exc:  # retried, then reported
                    if attempt == 4:
                        self.errors.append(f"{pod}: {exc}")
                    time.sleep(0.5)
        finally:
            self.in_flight.discard(pod)


def _has_result(pod: Any) -> bool:
    for cs in pod.status.container_statuses or []:
        if cs.name == "build" and cs.state and cs.state.terminated and cs.state.terminated.message:
            return True
    return False


class EngineTracker:
    """Follows the engines through a watch (a LIST of N engines every poll would load the API
    server this run measures) and notes when all are built and when all are steady."""

    def __init__(self, kube: Kube, namespace: str, engines: int) -> None:
        self.kube, self.namespace, self.engines = kube, namespace, engines
        self.built: dict[str, bool] = {}
        self.steady: dict[str, bool] = {}
        self.t0 = time.monotonic()
        self.all_built_at: float | None = None
        self.all_steady_at: float | None = None
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._watch, name="engine-watch", daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)

    def counts(self) -> tuple[int, int]:
        return sum(self.built.values()), sum(self.steady.values())

    def _watch(self) -> None:
        follow(
            self.stop,
            self.errors,
            self._on_engine,
            self.kube.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
        )

    def _on_engine(self, event: dict[str, Any]) -> None:
        obj = event["object"]
        name = obj["metadata"]["name"]
        self.built[name] = conditions(obj).get("Built", {}).get("status") == "True"
        self.steady[name] = steady(obj)
        built, ready = self.counts()
        now = time.monotonic() - self.t0
        if self.all_built_at is None and built == self.engines:
            self.all_built_at = now
        if self.all_steady_at is None and ready == self.engines:
            self.all_steady_at = now


# --- the operator -------------------------------------------------------------------------------


def operator_binary() -> str:
    beside = Path(sys.executable).parent / "trtops-operator"
    found = str(beside) if beside.exists() else shutil.which("trtops-operator")
    if not found:
        raise SystemExit("trtops-operator not found: pip install -e '.[worker,dev]'")
    return found


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    peak_rss_kib: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def poll_rss(self, t0: float) -> None:
        """Sample VmRSS every 0.5 s (a timeline) until stopped; VmHWM gives the exact peak."""
        while not self._stop.wait(0.5):
            status = read_proc_status(self.proc.pid)
            if not status:
                return
            self.samples.append((time.monotonic() - t0, status.get("VmRSS", 0)))
            self.peak_rss_kib = max(self.peak_rss_kib, status.get("VmHWM", 0))

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name.startswith("trtops_"):
                for s in family.samples:
                    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    out[f"{s.name}{{{labels}}}"] = s.value
        return out

    def stop(self, timeout: float = 20) -> int:
        status = read_proc_status(self.proc.pid)
        if status:
            self.peak_rss_kib = max(self.peak_rss_kib, status.get("VmHWM", 0))
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def read_proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


@contextlib.contextmanager
def start_operator(
    namespace: str, env: dict[str, str], resync: float, workdir: Path
) -> Iterator[Operator]:
    port = free_port()
    log_path = workdir / "operator.log"
    args = [
        operator_binary(),
        "-n",
        namespace,
        "--metrics-port",
        str(port),
        "--metrics-address",
        "127.0.0.1",
        "--liveness",
        "",
        "--resync-seconds",
        str(resync),
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=out)
    op = Operator(proc, port, log_path)
    try:
        yield op
    finally:
        if proc.poll() is None:
            op.stop()


# --- API server request counts ------------------------------------------------------------------

RequestKey = tuple[str, str, str]  # (verb, resource, subresource)


def request_counts(raw: str) -> dict[RequestKey, float]:
    """``apiserver_request_total`` summed over codes etc., per (verb, resource, subresource);
    non-resource requests (/metrics, /readyz, discovery) left out."""
    counts: dict[RequestKey, float] = defaultdict(float)
    for family in text_string_to_metric_families(raw):
        if family.name != "apiserver_request":
            continue
        for s in family.samples:
            if s.name != "apiserver_request_total" or not s.labels.get("resource"):
                continue
            key = (s.labels["verb"], s.labels["resource"], s.labels.get("subresource", ""))
            counts[key] += s.value
    return counts


def request_latency(raw: str) -> dict[str, tuple[float, float]]:
    """(seconds, count) of ``apiserver_request_duration_seconds`` per verb, watches left out."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(raw):
        if family.name != "apiserver_request_duration_seconds":
            continue
        for s in family.samples:
            verb = s.labels.get("verb", "")
            if verb in ("WATCH", "WATCHLIST", "CONNECT") or not s.labels.get("resource"):
                continue
            if s.name.endswith("_sum"):
                out[verb][0] += s.value
            elif s.name.endswith("_count"):
                out[verb][1] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def mean_latency_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    out = {}
    for verb, (total, count) in after.items():
        t0, c0 = before.get(verb, (0.0, 0.0))
        if count > c0:
            out[verb] = round(1000 * (total - t0) / (count - c0), 1)
    return dict(sorted(out.items()))


def delta(before: dict[RequestKey, float], after: dict[RequestKey, float]) -> Counter[RequestKey]:
    return Counter({k: int(v - before.get(k, 0)) for k, v in after.items() if v > before.get(k, 0)})


def by_verb(counts: Counter[RequestKey], only_operator: bool) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (verb, resource, _), n in counts.items():
        if not only_operator or resource in OPERATOR_RESOURCES:
            out[verb] += n
    return dict(sorted(out.items()))


def idle_window(kube: Kube, seconds: float) -> Counter[RequestKey]:
    before = request_counts(kube.raw_metrics())
    time.sleep(seconds)
    return delta(before, request_counts(kube.raw_metrics()))


# --- the run ------------------------------------------------------------------------------------


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def steady(obj: dict[str, Any]) -> bool:
    conds = conditions(obj)
    gen = obj["metadata"].get("generation")
    return (
        conds.get("Ready", {}).get("status") == "True"
        and conds.get("Progressing", {}).get("reason") == "RolloutComplete"
        and (obj.get("status") or {}).get("observedGeneration") == gen
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    env, existed = cluster_env(args.cluster)
    os.environ.update(env)
    kube = Kube(env["KUBECONFIG"])
    kube.apply_crd()
    tag = uuid.uuid4().hex[:6]
    fx = Fixture(
        kube,
        namespace=f"trtops-bench-{tag}",
        node=f"trtops-bench-{tag}",
        pv=f"trtops-bench-{tag}",
        capacity=args.engines * 2 + 50,
    )
    result: dict[str, Any] = {
        "cluster": args.cluster,
        "engines": args.engines,
        "models": args.models,
        "idleSeconds": args.idle_seconds,
        "resyncSeconds": args.resync_seconds,
        "loadAverageAtStart": os.getloadavg()[0],
    }
    workdir = Path(tempfile.mkdtemp(prefix="trtops-bench-"))
    finisher = BuildFinisher(kube, fx.namespace)
    try:
        fx.create()
        log(f"namespace {fx.namespace}; creating {args.engines} TrtEngines ({args.models} models)")
        t = time.monotonic()
        with cf.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: kube.custom.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        fx.namespace,
                        PLURAL,
                        engine(f"e-{i:04d}", f"m-{i % args.models:04d}", fx.namespace),
                    ),
                    range(args.engines),
                )
            )
        result["createSeconds"] = round(time.monotonic() - t, 1)
        finisher.start()

        raw = kube.raw_metrics()
        converge_before, latency_before = request_counts(raw), request_latency(raw)
        t0 = time.monotonic()
        with start_operator(fx.namespace, env, args.resync_seconds, workdir) as op:
            threading.Thread(target=op.poll_rss, args=(t0,), daemon=True).start()
            log(f"operator pid {op.proc.pid}, log {op.log_path}")
            tracker = EngineTracker(kube, fx.namespace, args.engines)
            tracker.start(t0)
            timeline: list[tuple[float, int, int]] = []
            try:
                while tracker.all_steady_at is None:
                    if op.proc.poll() is not None:
                        raise RuntimeError(
                            f"operator exited ({op.proc.returncode}); see {op.log_path}"
                        )
                    now = time.monotonic() - t0
                    built, ready = tracker.counts()
                    timeline.append((round(now, 1), built, ready))
                    if len(timeline) % 10 == 1:
                        log(f"t={now:5.1f}s built {built}/{args.engines} steady {ready}")
                    if now > args.timeout:
                        raise TimeoutError(f"{ready}/{args.engines} steady after {now:.0f}s")
                    time.sleep(1)
            finally:
                tracker.close()
            now = tracker.all_steady_at
            all_built_at = tracker.all_built_at
            raw = kube.raw_metrics()
            converge = delta(converge_before, request_counts(raw))
            result["convergeRequests"] = {
                "meanLatencyMsByVerb": mean_latency_ms(latency_before, request_latency(raw)),
                "total": sum(converge.values()),
                "perEngine": round(sum(converge.values()) / args.engines, 1),
                "top": {
                    f"{v} {r}{'/' + s if s else ''}": n for (v, r, s), n in converge.most_common(15)
                },
            }
            events = kube.core.list_namespaced_event(fx.namespace).items
            ours = [e for e in events if e.involved_object.kind == "TrtEngine"]
            result["engineEvents"] = {
                "perEngine": round(len(ours) / args.engines, 1),
                "byReason": dict(Counter(f"{e.type} {e.reason}" for e in ours).most_common()),
            }
            result["steadySeconds"] = round(now, 1)
            result["allBuiltSeconds"] = round(all_built_at or now, 1)
            result["timeline"] = timeline
            log(f"all {args.engines} steady after {now:.1f}s; settling {args.settle_seconds}s")
            finisher.close()
            fx.cordon()
            time.sleep(args.settle_seconds)
            m0 = op.metrics()
            log(f"idle window with the operator running ({args.idle_seconds}s)")
            running = idle_window(kube, args.idle_seconds)
            m1 = op.metrics()
            result["operatorMetricsIdleDelta"] = {
                k: v - m0.get(k, 0) for k, v in m1.items() if v != m0.get(k, 0)
            }
            result["operatorMetrics"] = m1
            result["exitCode"] = op.stop()
            result["peakRssMiB"] = round(op.peak_rss_kib / 1024, 1)
            result["rssAtSteadyMiB"] = round(
                next((kib for s, kib in op.samples if s >= now), op.peak_rss_kib) / 1024, 1
            )
        # The operator's watches end when it stops, and the API server counts a watch when it
        # ends: let that pass before the baseline starts.
        time.sleep(args.settle_seconds)
        log(f"baseline window with the operator stopped ({args.idle_seconds}s)")
        baseline = idle_window(kube, args.idle_seconds)
        net = Counter(running)
        net.subtract(baseline)
        result["idle"] = {
            "withOperator": _idle_summary(running),
            "baseline": _idle_summary(baseline),
            "operatorResourcesNet": {
                f"{v} {r}{'/' + s if s else ''}": n
                for (v, r, s), n in sorted(net.items())
                if n and r in OPERATOR_RESOURCES
            },
        }
        result["watchErrors"] = (finisher.errors + tracker.errors)[:10]
        result["buildPodsWithResult"] = len(finisher.done)
        result["resultWrites"] = sum(finisher.attempts.values())
    finally:
        finisher.close()
        if not args.keep and existed:  # a cluster this run created goes as a whole, below
            log("cleaning up")
            result["leftBehind"] = fx.delete(timeout=args.cleanup_seconds)
        result["operatorLog"] = str(workdir / "operator.log")
        result["loadAverageAtEnd"] = os.getloadavg()[0]
        if not existed and not args.keep:
            log(f"deleting cluster {args.cluster} (this run created it)")
            cluster_script(args.cluster, "down", capture_output=True, timeout=120)
    return result


def _idle_summary(counts: Counter[RequestKey]) -> dict[str, Any]:
    watches = sum(n for (v, _, _), n in counts.items() if v == "WATCH")
    return {
        "total": sum(counts.values()),
        "watches": watches,
        "nonWatch": sum(counts.values()) - watches,
        "byVerb": by_verb(counts, only_operator=False),
        "operatorResourcesByVerb": by_verb(counts, only_operator=True),
        "byRequest": {
            f"{v} {r}{'/' + s if s else ''}": n for (v, r, s), n in sorted(counts.items())
        },
    }


def table(r: dict[str, Any]) -> str:
    idle, base = r["idle"]["withOperator"], r["idle"]["baseline"]
    op_nonwatch = sum(n for k, n in idle["operatorResourcesByVerb"].items() if k != "WATCH") - sum(
        n for k, n in base["operatorResourcesByVerb"].items() if k != "WATCH"
    )
    op_watch = idle["operatorResourcesByVerb"].get("WATCH", 0) - base[
        "operatorResourcesByVerb"
    ].get("WATCH", 0)
    rows = [
        ("engines (distinct build keys)", f"{r['engines']} ({r['models']})", ""),
        ("operator start -> all steady", f"{r['steadySeconds']} s", "< 120 s"),
        ("operator start -> all built", f"{r['allBuiltSeconds']} s", ""),
        ("operator peak RSS (VmHWM)", f"{r['peakRssMiB']} MiB", "< 300 MB"),
        (
            f"idle {r['idleSeconds']}s, operator resources, non-watch (net of baseline)",
            str(op_nonwatch),
            "~0",
        ),
        (f"idle {r['idleSeconds']}s, operator resources, watches (net)", str(op_watch), ""),
        (
            f"idle {r['idleSeconds']}s, all API requests with operator / baseline",
            f"{idle['total']} / {base['total']}",
            "",
        ),
    ]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{'measure':<{width}}  {'value':>16}  target", "-" * (width + 28)]
    lines += [f"{a:<{width}}  {b:>16}  {c}" for a, b, c in rows]
    lines.append("idle with operator, by verb: " + json.dumps(idle["byVerb"]))
    lines.append("idle baseline,      by verb: " + json.dumps(base["byVerb"]))
    lines.append("net on operator resources:   " + json.dumps(r["idle"]["operatorResourcesNet"]))
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cluster",
        default="trtops-bench",
        help="local cluster name (hack/cluster.sh's TRTOPS_CLUSTER); a cluster of its own keeps "
        "other test runs out of the API server's counters (and this load out of theirs); "
        "deleted at the end when this run created it",
    )
    p.add_argument("--engines", type=int, default=500)
    p.add_argument("--models", type=int, default=0, help="distinct models (default: --engines)")
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--settle-seconds", type=float, default=5)
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=30,
        help="operator resync period; below --idle-seconds so the idle window holds a resync",
    )
    p.add_argument("--timeout", type=float, default=900, help="give up waiting for steady state")
    p.add_argument("--cleanup-seconds", type=float, default=240)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--keep", action="store_true", help="leave the namespace and node in place")
    args = p.parse_args(argv)
    args.models = args.models or args.engines
    # SIGTERM (timeout, CI) unwinds like Ctrl-C, so the cleanup in ``run`` still happens.
    signal.signal(signal.SIGTERM, _interrupt)
    result = run(args)
    print(table(result))
    text = json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
