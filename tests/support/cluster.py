"""The local control plane for tests: started once per session through hack/cluster.sh (or reused
when already running), plus small helpers to wait on what real controllers do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "hack" / "cluster.sh"

T = TypeVar("T")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("TRTOPS_CACHE", str(Path(base) / "trtops")))


def export_cluster_env() -> Path:
    """Export KUBECONFIG and PATH (the project's kubectl) for this process; return the kubeconfig.

    Done before any test module imports ``kubernetes``, whose config loader reads KUBECONFIG
    once, at import time (kopf's login goes through it).
    """
    env_line = subprocess.run(
        [str(CLUSTER_SCRIPT), "env"], check=True, capture_output=True, text=True
    ).stdout.strip()
    # "export KUBECONFIG=... PATH=...:$PATH"
    assignments = dict(part.split("=", 1) for part in env_line.removeprefix("export ").split())
    kubeconfig = Path(assignments["KUBECONFIG"])
    os.environ["KUBECONFIG"] = str(kubeconfig)
    bin_dir = assignments["PATH"].split(":", 1)[0]
    if bin_dir not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ["PATH"]
    kube_config_module = sys.modules.get("kubernetes.config.kube_config")
    if kube_config_module is not None:  # already imported: it captured the old KUBECONFIG
        kube_config_module.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    return kubeconfig


def ensure_cluster() -> Path:
    """Bring the cluster up, or reuse a healthy one; return its kubeconfig."""
    subprocess.run([str(CLUSTER_SCRIPT), "up"], check=True, timeout=60 * 60)
    return export_cluster_env()


def kubectl(*args: str, input_text: str | None = None, check: bool = True) -> str:
    """Run the project's own kubectl against the test cluster and return its stdout."""
    proc = subprocess.run(
        ["kubectl", "--request-timeout=20s", *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; a no-op for a finished process."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


KWOK_NODE = "kwok.x-k8s.io/node"  # annotates the nodes kwok manages (hack/cluster.sh)


def started_pod(core: Any, namespace: str, selector: str, timeout: float = 60.0) -> str:
    """The name of a pod matching ``selector`` once it is bound and, on a node kwok manages,
    started (phase Running); ``core`` is a ``CoreV1Api``. A kubelet finishes only a started
    container, and a status written before kwok's start of the pod could be overwritten by it;
    kwok then leaves a build pod Running (hack/kwok/pod-complete.yaml) until the test finishes
    it. On a node no kwok manages nothing else writes the pod's status. Raises TimeoutError."""

    def may_finish(pod: Any) -> bool:
        if pod.status.phase == "Running":
            return True
        if not pod.spec.node_name:
            return False
        node = core.read_node(pod.spec.node_name)
        return (node.metadata.annotations or {}).get(KWOK_NODE) != "fake"

    def probe() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return next((p.metadata.name for p in pods if may_finish(p)), None)

    return wait_for(probe, timeout=timeout, what=f"a started pod ({selector})")
