"""Start and stop the local node agent as a subprocess, for tests and the demo."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cluster import REPO, kubectl, stop_process, wait_for


@dataclass
class NodeAgentHandle:
    node: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def node_selector(self) -> dict[str, str]:
        return {"trtops.dev/node-agent": self.node}

    def static_site(
        self,
        name: str,
        *,
        claim: str,
        ready_path: str,
        replicas: int = 1,
        image: str = "x",
        read_only: bool = False,
    ) -> Any:
        """A Deployment (pods labelled ``app: name``) whose pods this agent runs as
        ``python -m http.server`` on their pod IP, port 8080, serving ``claim``'s folder."""
        from kubernetes import client

        labels = {"app": name}
        pod_ip = client.V1EnvVarSource(
            field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
        )
        container = client.V1Container(
            name="web",
            image=image,
            command=[
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "$(POD_IP)",
                "8080",
                "--directory",
                "/srv",
            ],
            env=[client.V1EnvVar(name="POD_IP", value_from=pod_ip)],
            volume_mounts=[
                client.V1VolumeMount(name="site", mount_path="/srv", read_only=read_only)
            ],
            readiness_probe=client.V1Probe(
                http_get=client.V1HTTPGetAction(path=ready_path, port=8080), period_seconds=1
            ),
        )
        volume = client.V1Volume(
            name="site",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
        )
        return client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1DeploymentSpec(
                replicas=replicas,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        node_selector=self.node_selector, containers=[container], volumes=[volume]
                    ),
                ),
            ),
        )

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
metadata: {{name: {claim}, namespace: {namespace}, labels: {{trtops.dev/mountable: "true"}}}}
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
