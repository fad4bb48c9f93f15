"""Start and stop the local node agent as a subprocess, for tests and the demo."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import REPO, kubectl, stop_process, wait_for


@dataclass
class NodeAgentHandle:
    node: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def node_selector(self) -> dict[str, str]:
        return {"trtops.dev/node-agent": self.node}

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The host folder that stands in for a PersistentVolumeClaim."""
        path = self.root / "pvc" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create_claim(self, namespace: str, claim: str, size: str = "1Gi") -> Path:
        """A bound PersistentVolumeClaim (and its PersistentVolume) whose data is a host folder.

        The scheduler refuses pods whose claims are unbound, so the claim is bound for real by
        the PV controller; the agent maps it to :meth:`claim_dir`.
        """
        path = self.claim_dir(namespace, claim)
        pv = f"{namespace}-{claim}"[:63]
        manifest = f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}, labels: {{trtops.dev/test-claim: "true"}}}}
spec:
  capacity: {{storage: {size}}}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: ""
  hostPath: {{path: {path}}}
  claimRef: {{namespace: {namespace}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {namespace}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: {size}}}}}
"""
        kubectl("apply", "-f", "-", input_text=manifest)
        wait_for(
            lambda: (
                kubectl("get", "pvc", claim, "-n", namespace, "-o", "jsonpath={.status.phase}")
                == "Bound"
            ),
            timeout=30,
            what=f"claim {claim} to be bound",
        )
        return path

    def log(self) -> str:
        return (self.root / "agent.log").read_text(errors="replace")


@contextlib.contextmanager
def start_node_agent(root: Path, node: str = "local-0") -> Iterator[NodeAgentHandle]:
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with (root / "agent.log").open("ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.node_agent", "--node", node, "--root", str(root)],
            cwd=REPO,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C leaves it running until the caller's clean-up
            # has deleted the pods it runs, then stops it.
            start_new_session=True,
        )
    handle = NodeAgentHandle(node, root, proc)
    try:
        wait_for(
            lambda: (
                kubectl(
                    "get",
                    "node",
                    node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                    check=False,
                )
                == "True"
            ),
            timeout=30,
            what=f"node {node} to be Ready",
        )
        yield handle
    finally:
        stop_process(proc, grace=30)
        kubectl("delete", "node", node, "--wait=false", check=False)
