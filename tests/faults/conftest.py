"""The fault matrix's stack: the local control plane, the local node agent running build and
serving pods as real processes, a real Prometheus, and ``trtops-operator`` processes (as the
chart runs them: leader election on) that a test can start, SIGKILL and start again.

Readers count what a user counts: Events by reason (``kubectl get events``), Jobs, the claim's
folders, the Lease's holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import stack
from tests.support.cluster import kubectl, stop_process, wait_for
from tests.support.node_agent_process import NodeAgentHandle
from tests.support.prometheus import Prometheus

# Short leases keep takeovers quick in tests; the ratios are client-go's (15 / 10 / 2 s).
LEASE = {"duration": 4.0, "deadline": 3.0, "retry": 0.5}
NAME = "conv"


@dataclass
class FaultStack:
    namespace: str
    agent: NodeAgentHandle
    prometheus_url: str
    claim: Path
    workdir: Path
    prometheus: Prometheus
    operators: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # -- operators --

    def start_operator(self, ident: str) -> subprocess.Popen[bytes]:
        """``python -m trtops_operator -n NS`` with leader election (the default) as ``ident``."""
        path = self.workdir / f"operator-{ident}.log"
        env = {
            **os.environ,
            "TRTOPS_WATCH_TIMEOUT_SECONDS": "5",
            "TRTOPS_LEADER_ELECTION_ID": ident,
            "TRTOPS_LEASE_DURATION_SECONDS": str(LEASE["duration"]),
            "TRTOPS_LEASE_RENEW_DEADLINE_SECONDS": str(LEASE["deadline"]),
            "TRTOPS_LEASE_RETRY_SECONDS": str(LEASE["retry"]),
            "TRTOPS_PROMETHEUS_ADDRESSES": self.prometheus_url,  # the installer's allowlist
        }
        env.pop("POD_NAMESPACE", None)  # the Lease lives in the watched namespace
        with path.open("ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trtops_operator",
                    "-n",
                    self.namespace,
                    "--metrics-port",
                    "0",
                    "--liveness",
                    "",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.operators[ident] = proc
        return proc

    def kill_operator(self, ident: str) -> None:
        """SIGKILL: no clean-up, no Lease release (a crash, an OOM kill, a lost node)."""
        proc = self.operators.pop(ident)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_operator(self, ident: str) -> None:
        stop_process(self.operators.pop(ident), grace=20)

    def operator_log(self, ident: str) -> str:
        return (self.workdir / f"operator-{ident}.log").read_text(errors="replace")

    def lease_holder(self) -> str:
        out = kubectl(
            "get",
            "lease",
            "trtops-operator",
            "-n",
            self.namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
            check=False,
        )
        return out.strip()

    # -- what a user sees --

    def engine(self, name: str = NAME) -> dict[str, Any]:
        return stack.engine(self.namespace, name)

    def condition(self, type_: str, name: str = NAME) -> dict[str, Any]:
        return stack.condition(self.engine(name), type_)

    def events(self, name: str = NAME) -> list[dict[str, Any]]:
        """The operator's Events on engine ``name`` (each posted once: count 1)."""
        items = json.loads(
            kubectl(
                "get",
                "events",
                "-n",
                self.namespace,
                "-o",
                "json",
                "--field-selector",
                f"involvedObject.name={name},involvedObject.kind=TrtEngine",
            )
        )["items"]
        return [e for e in items if e.get("reportingComponent") == "trtops-operator"]

    def count(self, reason: str | None = None, told: str | None = None, name: str = NAME) -> int:
        """Events with ``reason``, or whose message tells ``told`` (e.g. ``Ready=True``)."""
        return sum(
            int(e.get("count") or 1)
            for e in self.events(name)
            if (reason is None or e["reason"] == reason)
            and (told is None or told in (e.get("message") or ""))
        )

    def told(self, reason: str, name: str = NAME) -> list[str]:
        """The messages of the Events with ``reason`` (for assertion messages)."""
        return [
            f"{e.get('lastTimestamp')} {e.get('message')}"
            for e in self.events(name)
            if e["reason"] == reason
        ]

    def jobs(self) -> list[str]:
        out = kubectl("get", "jobs", "-n", self.namespace, "-o", "name", check=False)
        return out.split()

    def pods(self, component: str) -> list[str]:
        out = kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-l",
            f"trtops.dev/component={component}",
            "-o",
            "name",
            check=False,
        )
        return out.split()

    def claim_entries(self) -> list[str]:
        return sorted(p.name for p in self.claim.iterdir() if p.name not in ("models", "data"))

    def temp_folders(self) -> list[Path]:
        return [p for p in self.claim.rglob(".tmp-*") if p.is_dir()]

    def apply_engine(self, **overrides: Any) -> None:
        manifest = stack.engine_manifest(
            NAME, node=self.agent.node, prometheus_url=self.prometheus_url
        )
        spec = manifest["spec"]
        for path, value in overrides.items():  # a__b=value sets spec.a.b; None removes it
            target = spec
            *parents, leaf = path.split("__")
            for p in parents:
                target = target.setdefault(p, {})
            if value is None:
                target.pop(leaf, None)
            else:
                target[leaf] = value
        stack.apply(self.namespace, manifest)

    def annotate(self, command: str) -> None:
        kubectl(
            "annotate",
            "trtengine",
            NAME,
            "-n",
            self.namespace,
            "--overwrite",
            f"trtops.dev/{command}={time.time_ns()}",
        )


@pytest.fixture
def fs(
    namespace: str,
    node_agent: NodeAgentHandle,
    trtengine_crd: str,
    prometheus: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[FaultStack]:
    claim = node_agent.create_claim(namespace, "plans")
    stack.fill_claim(claim)
    prom = prometheus({}, discover_pods=True)
    stack.apply(namespace, stack.http_route_manifest(NAME))
    fs = FaultStack(namespace, node_agent, prom.url, claim, tmp_path, prom)
    try:
        yield fs
    finally:
        for ident in list(fs.operators):
            fs.stop_operator(ident)
        for ident in ("a", "b", "c"):
            log = tmp_path / f"operator-{ident}.log"
            if log.exists():
                print(f"--- operator {ident} (tail) ---\n{log.read_text(errors='replace')[-3000:]}")


def wait_leader(fs: FaultStack, ident: str, timeout: float = 120) -> float:
    """Seconds until ``ident`` holds the Lease."""
    start = time.monotonic()
    wait_for(lambda: fs.lease_holder() == ident, timeout=timeout, what=f"{ident} to lead")
    return time.monotonic() - start
