"""The local node agent really runs pods bound to its node: a Deployment's process serves HTTP on
its own pod IP and turns Ready through its readiness probe; a Job's process writes a termination
message that reaches the pod status; deleting a pod stops its process."""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from tests.support.cluster import wait_for
from tests.support.node_agent_process import NodeAgentHandle

pytestmark = pytest.mark.cluster


def test_deployment_pod_runs_as_a_process_and_becomes_ready(
    k8s_api: Any, namespace: str, node_agent: NodeAgentHandle
) -> None:
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    claim = node_agent.create_claim(namespace, "site")
    (claim / "index.html").write_text("served from the claim")
    apps.create_namespaced_deployment(
        namespace,
        node_agent.static_site(
            "web",
            claim="site",
            ready_path="/index.html",
            replicas=2,
            image="python:3.11",
            read_only=True,
        ),
    )
    wait_for(
        lambda: (
            (apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas or 0)
            == 2
        ),
        timeout=60,
        what="2 ready replicas served by real processes",
    )
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:8080/index.html", timeout=5) as resp:
            assert resp.read() == b"served from the claim"

    # Deleting a pod stops its process; the ReplicaSet controller replaces it.
    victim = pods[0]
    core.delete_namespaced_pod(victim.metadata.name, namespace)
    wait_for(
        lambda: (
            victim.metadata.name
            not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
        ),
        timeout=60,
        what="the deleted pod to be removed",
    )
    with pytest.raises(OSError, match=r"refused|timed out"):
        urllib.request.urlopen(f"http://{victim.status.pod_ip}:8080/index.html", timeout=2)


def test_job_pod_exit_code_and_termination_message_reach_status(
    k8s_api: Any, namespace: str, node_agent: NodeAgentHandle
) -> None:
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    script = "import sys; open(sys.argv[1], 'w').write('{\"ok\": false}'); sys.exit(3)"
    _python_job(batch, namespace, node_agent, "fails", script)
    job = wait_for(
        lambda: (j := batch.read_namespaced_job_status("fails", namespace)).status.failed and j,
        timeout=60,
        what="the Job to fail",
    )
    assert job.status.failed == 1
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=fails").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.message == '{"ok": false}'


# Fetches each URL given, and writes what each answered (or the error), in order, as the
# termination message.
FETCH = """
import json, sys, time, urllib.request
out = []
for url in sys.argv[2:]:
    start = time.monotonic()
    try:
        out.append(urllib.request.urlopen(url, timeout=10).read().decode())
    except OSError as exc:
        out.append(f"error after {time.monotonic() - start:.1f}s: {exc}")
open(sys.argv[1], "w").write(json.dumps(out))
"""


def test_a_pod_reaches_a_service_by_its_dns_name(
    k8s_api: Any, namespace: str, node_agent: NodeAgentHandle
) -> None:
    """As cluster DNS and kube-proxy do on a node: ``<svc>.<ns>.svc:<port>`` in a pod's args
    reaches a ready pod of the Service; a Service with no pod refuses at once."""
    from tests.cluster.test_gateway import _site

    _site(k8s_api, namespace, node_agent, "blue")  # Service blue:80 -> pods' 8080, "who" = blue
    apps, batch, core = (
        client.AppsV1Api(k8s_api),
        client.BatchV1Api(k8s_api),
        client.CoreV1Api(k8s_api),
    )
    wait_for(
        lambda: apps.read_namespaced_deployment_status("blue", namespace).status.ready_replicas,
        timeout=60,
        what="blue to be ready",
    )
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="empty"),
            spec=client.V1ServiceSpec(
                selector={"app": "nothing"}, ports=[client.V1ServicePort(port=80)]
            ),
        ),
    )
    found, empty = f"http://blue.{namespace}.svc:80/who", f"http://empty.{namespace}.svc:80/who"
    _python_job(batch, namespace, node_agent, "fetch", FETCH, found, empty)
    wait_for(
        lambda: batch.read_namespaced_job_status("fetch", namespace).status.succeeded,
        timeout=60,
        what="the fetching Job to succeed",
    )
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=fetch").items[0]
    found_answer, empty_answer = json.loads(
        pod.status.container_statuses[0].state.terminated.message
    )
    assert found_answer == "blue"
    assert empty_answer.startswith("error after 0."), empty_answer  # refused, not timed out


def _python_job(
    batch: client.BatchV1Api,
    namespace: str,
    node_agent: NodeAgentHandle,
    name: str,
    script: str,
    *args: str,
) -> None:
    """A Job on the agent's node running ``python -c script /dev/termination-log *args``, once."""
    container = client.V1Container(
        name="main",
        image="x",
        command=[sys.executable, "-c", script, "/dev/termination-log"],
        args=list(args) or None,
    )
    pod = client.V1PodSpec(
        restart_policy="Never", node_selector=node_agent.node_selector, containers=[container]
    )
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=pod)),
        ),
    )
