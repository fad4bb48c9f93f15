"""The chart's RBAC is enough and no more: `helm install` the chart, run the operator with a token
of the chart's ServiceAccount only (no admin certificates), reconcile a TrtEngine to Ready, and
check `kubectl auth can-i --list` shows nothing beyond the chart's rules.

The operator Deployment's own pod is faked by kwok; the test runs the operator process itself
(`python -m trtops_operator`, as the image does) with a kubeconfig holding only the SA token.
The build pod's result is written by the admin client, as the kubelet would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.conftest import finish_build_pod
from tests.operator.test_cluster import SUCCESS, Cluster
from tests.ship.conftest import CHART, helm, tool
from tests.ship.test_chart import EXPECTED_RULES
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("trtengine_crd")]

Table = dict[tuple[str, str], set[str]]

# Granted to every authenticated user by the default ClusterRoles (system:basic-user and friends).
BASELINE: Table = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"): {"create"},
    ("authorization.k8s.io", "selfsubjectrulesreviews"): {"create"},
    ("authentication.k8s.io", "selfsubjectreviews"): {"create"},
}
FRAMEWORK: Table = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
NAMESPACES: Table = {("", "namespaces"): {"list", "watch"}}
LEADER: Table = {("coordination.k8s.io", "leases"): {"create", "get", "update"}}

# What the operator must never be able to do anywhere (verb, resource).
NEVER = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("list", "configmaps"),
    ("create", "pods"),
    ("delete", "pods"),
    ("patch", "pods"),
    ("create", "pods/exec"),
    ("create", "trtengines.trtops.dev"),
    ("delete", "trtengines.trtops.dev"),
    ("update", "trtengines.trtops.dev"),
    ("update", "httproutes.gateway.networking.k8s.io"),
    ("create", "httproutes.gateway.networking.k8s.io"),
    ("list", "virtualservices.networking.istio.io"),
    ("get", "namespaces"),
    ("create", "namespaces"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("create", "serviceaccounts/token"),
    ("create", "leases.coordination.k8s.io"),
]
# What it needs in a watched namespace, beyond watching (spot checks of the listed table).
NEEDED = [
    ("patch", "httproutes.gateway.networking.k8s.io"),
    ("patch", "virtualservices.networking.istio.io"),
    ("delete", "services"),
    ("create", "deployments.apps"),
    ("patch", "trtengines.trtops.dev/status"),
]

ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")
FORBIDDEN = re.compile(r"\b403\b|forbidden|not enough permissions", re.IGNORECASE)


def kubectl(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [tool("kubectl", "hack/cluster.sh env"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def parse_can_i_list(text: str) -> tuple[Table, Table]:
    """`kubectl auth can-i --list` -> ((group, resource) -> verbs, non-resource URL -> verbs)."""
    resources: Table = {}
    urls: Table = {}
    for line in text.splitlines()[1:]:
        m = ROW.match(line)
        assert m, f"unexpected can-i line: {line!r}"
        resource, url, _names, verbs = m.groups()
        verb_set = set(verbs.split())
        if resource:
            name, _, sub = resource.partition("/")
            plural, _, group = name.partition(".")
            key = (group, plural + (f"/{sub}" if sub else ""))
            resources.setdefault(key, set()).update(verb_set)
        else:
            urls.setdefault(("", url), set()).update(verb_set)
    return resources, urls


def merge(*tables: Table) -> Table:
    out: Table = {}
    for table in tables:
        for key, verbs in table.items():
            out.setdefault(key, set()).update(verbs)
    return out


@dataclass
class Release:
    namespace: str  # where the chart (ServiceAccount, Deployment) lives
    user: str  # system:serviceaccount:<namespace>:<sa>
    sa: str


@pytest.fixture
def install(namespace: str, k8s_api: Any) -> Iterator[Any]:
    """``install(watch=[...])``: helm-install the chart into a namespace of its own; uninstalled
    after."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    done: list[Release] = []
    name = f"r{uuid.uuid4().hex[:6]}"  # ClusterRole names are cluster-wide: one per test run

    def run(watch: list[str]) -> Release:
        rel_ns = f"{namespace}-op"
        meta = client.V1ObjectMeta(name=rel_ns, labels={"trtops.dev/test": "true"})
        core.create_namespace(client.V1Namespace(metadata=meta))
        rel = Release(rel_ns, "", "")
        done.append(rel)
        args = ["install", name, str(CHART), "-n", rel_ns, "--set", "crds.enabled=false"]
        if watch:
            args += ["--set", "watchNamespaces={" + ",".join(watch) + "}"]
        else:
            args += ["--set", "clusterWide=true"]
        helm(*args)
        manifest = list(yaml.safe_load_all(helm("get", "manifest", name, "-n", rel_ns).stdout))
        (sa,) = [d for d in manifest if d and d["kind"] == "ServiceAccount"]
        rel.sa = sa["metadata"]["name"]
        rel.user = f"system:serviceaccount:{rel_ns}:{rel.sa}"
        return rel

    yield run
    for rel in done:
        helm("uninstall", name, "-n", rel.namespace, check=False)
        core.delete_namespace(rel.namespace, propagation_policy="Background")


def sa_kubeconfig(admin: Path, rel: Release, path: Path) -> Path:
    """A kubeconfig with the admin's cluster entry (server, CA) and only the SA's token."""
    proc = kubectl("create", "token", rel.sa, "-n", rel.namespace, "--duration=10m")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(admin.read_text())
    cluster = dict(config["clusters"][0]["cluster"])
    if "certificate-authority" in cluster:  # relative paths are relative to the kubeconfig
        cluster["certificate-authority"] = str(admin.parent / cluster["certificate-authority"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": "operator", "user": {"token": proc.stdout.strip()}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": "local", "user": "operator"}}
                ],
                "current-context": "operator",
            }
        )
    )
    whoami = kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=path
    )
    assert whoami.stdout == rel.user, whoami.stderr
    return path


def can_i_table(rel: Release, namespace: str) -> tuple[Table, Table]:
    proc = kubectl("auth", "can-i", "--list", f"--as={rel.user}", "-n", namespace)
    assert proc.returncode == 0, proc.stderr
    print(f"\n$ kubectl auth can-i --list --as={rel.user} -n {namespace}\n{proc.stdout}")
    return parse_can_i_list(proc.stdout)


def can_i(rel: Release, verb: str, resource: str, namespace: str) -> bool:
    """A SubjectAccessReview with the group spelled out: `kubectl auth can-i` guesses the group
    from discovery and misreads kinds whose CRD is not installed (Istio's)."""
    from kubernetes import client, config

    name, _, sub = resource.partition("/")
    plural, _, group = name.partition(".")
    api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    try:
        review = client.AuthorizationV1Api(api).create_subject_access_review(
            {
                "spec": {
                    "user": rel.user,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{rel.namespace}",
                        "system:authenticated",
                    ],
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": verb,
                        "group": group,
                        "resource": plural,
                        "subresource": sub,
                    },
                }
            }
        )
    finally:
        api.close()
    return bool(review.status.allowed)


def assert_exactly(listed: Table, urls: Table, granted: Table) -> None:
    beyond = {k: v - granted.get(k, set()) for k, v in listed.items()}
    assert {k: v for k, v in beyond.items() if v} == {}, "permissions beyond the chart's rules"
    assert listed == granted, "a chart rule is not in effect"
    assert all(v == {"get"} for v in urls.values()), urls  # discovery, version, healthz only


@pytest.mark.usefixtures("plans_claim")
def test_operator_with_only_the_chart_rbac_reconciles_to_ready(
    namespace: str, kubeconfig: Path, k8s_api: Any, install: Any, tmp_path: Path
) -> None:
    rel: Release = install(watch=[namespace])
    sa_config = sa_kubeconfig(kubeconfig, rel, tmp_path / "sa.kubeconfig")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env |= {"KUBECONFIG": str(sa_config), "TRTOPS_WATCH_TIMEOUT_SECONDS": "30"}
    env["POD_NAMESPACE"] = rel.namespace  # the downward API's value: the Lease lives there
    log_path = tmp_path / "operator.log"
    cluster = Cluster(k8s_api, namespace)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trtops_operator",
                f"--namespace={namespace}",
                f"--leader-election-name={rel.sa}",  # as the chart passes it (its full name)
                "--metrics-port=0",
                "--liveness=",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            cluster.create("conv")
            job = wait_for(cluster.jobs, timeout=30, what="a build Job")[0]
            finish_build_pod(k8s_api, namespace, cluster.build_pod(job.metadata.name), SUCCESS)
            wait_for(
                lambda: cluster.condition("conv", "Ready").get("status") == "True",
                timeout=90,  # a loaded CI machine: the serving pod's readiness takes a while
                what="conv Ready",
            )
            assert len(cluster.deployments("conv")) == 1
            assert proc.poll() is None, "operator exited"
        finally:
            proc.send_signal(signal.SIGINT)  # kopf's graceful stop
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            print(log_path.read_text()[-3000:])  # shown by pytest when a wait above fails
    output = log_path.read_text()
    assert not FORBIDDEN.search(output), [ln for ln in output.splitlines() if FORBIDDEN.search(ln)]

    listed, urls = can_i_table(rel, namespace)
    assert_exactly(listed, urls, merge(EXPECTED_RULES, FRAMEWORK, NAMESPACES, BASELINE))
    assert [(verb, res) for verb, res in NEEDED if not can_i(rel, verb, res, namespace)] == []
    allowed = [(verb, res) for verb, res in NEVER if can_i(rel, verb, res, namespace)]
    assert allowed == []
    # Outside the watched namespace (here: its own), only the cluster-scoped framework rules
    # and its Lease.
    listed, urls = can_i_table(rel, rel.namespace)
    assert_exactly(listed, urls, merge(FRAMEWORK, NAMESPACES, BASELINE, LEADER))
    assert not can_i(rel, "list", "trtengines.trtops.dev", rel.namespace)
    assert not can_i(rel, "create", "jobs.batch", rel.namespace)


def test_cluster_wide_install_grants_the_same_rules_everywhere(
    namespace: str, install: Any
) -> None:
    rel: Release = install(watch=[])
    listed, urls = can_i_table(rel, namespace)
    assert_exactly(listed, urls, merge(EXPECTED_RULES, FRAMEWORK, BASELINE))
    allowed = [(verb, res) for verb, res in NEVER if can_i(rel, verb, res, namespace)]
    assert allowed == []
