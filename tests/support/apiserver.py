"""An outage of the local cluster's real kube-apiserver, for fault tests.

``hack/cluster.sh`` runs the control plane with ``kwokctl --runtime binary``: each component is a
plain process, described in ``<kwok workdir>/clusters/<name>/kwok.yaml`` (binary, arguments,
folder), whose pid kwokctl keeps in ``pids/<component>.pid``. kwokctl can stop only a whole
cluster, so the outage is made here:

- :func:`stop` SIGKILLs the API server: it stops answering at once, as in a crash or a lost
  control-plane node (its graceful SIGTERM shutdown holds the process 30 s or more on a loaded
  machine). etcd keeps running, so every object survives, as in a real outage.
- :func:`start` starts it again from kwok.yaml, its pid written back where kwokctl looks for it
  (``hack/cluster.sh down`` still stops it), waits for ``/readyz``, and restarts
  kube-controller-manager and kube-scheduler: with leader election (on in clusters made before
  ``hack/cluster.sh`` turned it off) they exit after 10 s without the API server, and a real
  node's kubelet restarts them; without it their watches back off for up to a minute.
- :func:`wait_controllers` returns once the controller manager acts again (a new namespace gets
  its ServiceAccount). Call it before the test ends: the next test's namespace needs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import cache_dir, kubectl, wait_for

API_SERVER = "kube-apiserver"
# Restarted after the outage, as a control-plane node's kubelet restarts them when they lose their
# leader Lease; restarted either way, since their watches would otherwise back off for up to a
# minute after the API server is back.
RESTARTED = ("kube-controller-manager", "kube-scheduler")

# The processes started here: kept, so that no Popen is collected (and warned about) while its
# process runs on; each outlives this test process, as kwokctl's did.
_started: list[subprocess.Popen[bytes]] = []


def _cluster_dir() -> Path:
    name = os.environ.get("TRTOPS_CLUSTER", "trtops")
    return cache_dir() / "kwok" / "clusters" / name


def _pid(component: str) -> int:
    return int((_cluster_dir() / "pids" / f"{component}.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has stopped working, whoever reaps it


def _components() -> dict[str, dict[str, Any]]:
    """kwok.yaml's components by name (its first document is the KwokctlConfiguration)."""
    docs = yaml.safe_load_all((_cluster_dir() / "kwok.yaml").read_text())
    config = next(d for d in docs if d and d.get("kind") == "KwokctlConfiguration")
    return {c["name"]: c for c in config["components"]}


def _launch(component: dict[str, Any]) -> None:
    folder = _cluster_dir()
    with (folder / "logs" / f"{component['name']}.log").open("ab") as log:
        proc = subprocess.Popen(
            [component["binary"], *component.get("args", [])],
            cwd=component.get("workDir") or folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _started.append(proc)
    (folder / "pids" / f"{component['name']}.pid").write_text(str(proc.pid))


def _kill(pid: int, name: str) -> None:
    """SIGKILL ``pid`` if it runs, and return once it is gone."""
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), timeout=30, interval=0.05, what=f"{name} to exit")


def stop() -> None:
    """Kill the API server (SIGKILL) and return once it is gone."""
    _kill(_pid(API_SERVER), API_SERVER)


def start(timeout: float = 120) -> None:
    """Start the API server again and return once ``/readyz`` answers; then restart the
    controller manager and the scheduler (see the module docstring)."""
    components = _components()
    _launch(components[API_SERVER])
    wait_for(
        lambda: kubectl("get", "--raw", "/readyz", check=False).strip() == "ok",
        timeout=timeout,
        interval=0.5,
        what="the API server to be ready again",
    )
    for name in RESTARTED:
        _kill(_pid(name), name)
        _launch(components[name])


def wait_controllers(timeout: float = 120) -> None:
    """Until the controller manager acts again (it lists everything anew after its restart): what
    a test does next (a namespace's ServiceAccount, a Deployment's pods) needs it."""
    probe = f"apiserver-outage-probe-{os.getpid()}"
    kubectl("create", "namespace", probe)
    try:
        wait_for(
            lambda: kubectl("get", "serviceaccount", "default", "-n", probe, check=False),
            timeout=timeout,
            what="the controller manager to act again",
        )
    finally:
        kubectl("delete", "namespace", probe, "--wait=false", check=False)
