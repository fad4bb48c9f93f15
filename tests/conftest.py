"""Session-wide fixtures: the local control plane (started once, or reused), a namespace per test,
an in-process kopf operator, and a real Prometheus."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import trtengine_crd  # noqa: F401 - shared: the CRD, applied once
from tests.support import cluster as cluster_support
from tests.support.kopf_runner import run_operator
from tests.support.node_agent_process import NodeAgentHandle, start_node_agent
from tests.support.prometheus import Prometheus


def pytest_configure(config: pytest.Config) -> None:
    cluster_support.export_cluster_env()
    # In-process operators serve no metrics port unless a test asks for one (the operator's
    # default, 8080, would collide between parallel runs).
    os.environ.setdefault("TRTOPS_METRICS_PORT", "0")


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    """The local cluster's kubeconfig; KUBECONFIG and PATH (kubectl) are exported."""
    return cluster_support.ensure_cluster()


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: Path) -> Iterator[Any]:
    """A kubernetes ``ApiClient`` for the local cluster."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(k8s_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test (with its default ServiceAccount), deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"trtops.dev/test": "true"})
        )
    )
    cluster_support.wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"ServiceAccount default in {name}",
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def kopf_operator(kubeconfig: Path) -> Callable[..., AbstractContextManager[Any]]:
    """``with kopf_operator("pkg.module", namespaces=[ns]) as runner:`` runs an operator
    in-process."""
    return run_operator


@pytest.fixture(scope="session")
def node_agent(
    kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgentHandle]:
    """The local node agent (tests/support/node_agent.py) as a subprocess: pods scheduled to its
    node (select it with ``nodeSelector: {trtops.dev/node-agent: local-0}``) really run."""
    node = os.environ.get(
        "TRTOPS_NODE_AGENT_NAME", "local-0"
    )  # distinct names let test runs share a cluster
    with start_node_agent(tmp_path_factory.mktemp("node-agent"), node=node) as handle:
        yield handle


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """A factory that starts a real Prometheus scraping the given ``{job: [host:port]}`` targets
    and, with ``discover_pods=True``, the cluster's annotated pods."""
    started: list[Prometheus] = []

    def start(jobs: dict[str, list[str]], discover_pods: bool = False) -> Prometheus:
        server = Prometheus(
            workdir=tmp_path / f"prometheus-{len(started)}", jobs=jobs, discover_pods=discover_pods
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
