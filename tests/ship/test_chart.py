"""The Helm chart: lint, schema, CRD kept in step with crds/, RBAC scope and rules, secure
defaults, optional monitoring objects; and the rendered chart accepted by a real API server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ship.conftest import CHART, REPO, find, helm, render, template_args, tool

CRD_SOURCE = REPO / "crds" / "trtops.dev_trtengines.yaml"
KEEP = "helm.sh/resource-policy"

# (apiGroup, resource) -> verbs: the whole of what the operator may do in a watched namespace.
EXPECTED_RULES = {
    ("trtops.dev", "trtengines"): {"list", "watch", "patch"},
    ("trtops.dev", "trtengines/status"): {"patch"},
    ("trtops.dev", "trtengines/finalizers"): {"update"},
    ("batch", "jobs"): {"list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {
        "get",
        "list",
        "watch",
        "create",
        "patch",
        "delete",
    },
    ("", "persistentvolumeclaims"): {"get"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch"},
    ("", "events"): {"create"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "patch"},
    ("networking.istio.io", "virtualservices"): {"get", "patch"},
}


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def test_helm_lint_strict() -> None:
    proc = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in proc.stdout


def test_chart_crd_is_the_canonical_crd() -> None:
    crd = find(render(), "CustomResourceDefinition")
    assert len(crd) == 1
    rendered = crd[0]
    rendered["metadata"].pop("annotations", None)
    assert rendered == yaml.safe_load(CRD_SOURCE.read_text())


def test_sync_script_reports_no_drift() -> None:
    proc = subprocess.run(
        [str(REPO / "hack" / "sync-chart-crds.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sync_script_catches_a_crd_edit(tmp_path: Path) -> None:
    for rel in ("hack/sync-chart-crds.sh", "crds", "dashboards", "charts/trtops"):
        src, dst = REPO / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    crd = tmp_path / "crds" / "trtops.dev_trtengines.yaml"
    crd.write_text(crd.read_text().replace("shortNames: [trt]", "shortNames: [trt, te]"))
    script = tmp_path / "hack" / "sync-chart-crds.sh"
    check = subprocess.run([str(script), "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 1
    assert "out of date" in check.stderr
    subprocess.run([str(script)], capture_output=True, check=True)
    recheck = subprocess.run([str(script), "--check"], capture_output=True, check=False)
    assert recheck.returncode == 0


@pytest.mark.parametrize(
    ("sets", "crds", "keep"),
    [
        ({}, 1, True),
        ({"crds__keep": "false"}, 1, False),
        ({"crds__enabled": "false"}, 0, False),
    ],
)
def test_crd_options(sets: dict[str, str], crds: int, keep: bool) -> None:
    found = find(render(**sets), "CustomResourceDefinition")
    assert len(found) == crds
    if found:
        annotations = found[0]["metadata"].get("annotations") or {}
        assert (annotations.get(KEEP) == "keep") is keep


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("imag.tag=x", "imag"),  # a typo at the top level
        ("crds.keap=true", "keap"),  # a typo one level down
        ("securityContext.privileged=yes", "privileged"),  # wrong type
        ("watchNamespaces={Team_A}", "watchNamespaces"),  # not a namespace name
        ("image.digest=latest", "digest"),
        ("cost.gpuHourPrice=cheap", "gpuHourPrice"),
        ("cost.cpuHourPrice=-1", "cpuHourPrice"),
    ],
)
def test_schema_rejects_bad_values(setting: str, complaint: str) -> None:
    proc = helm(*template_args()[:-2], "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr


def test_prices_set_on_the_command_line_reach_the_operator() -> None:
    """`helm --set cost.gpuHourPrice=2.5` passes "2.5" as a string (Helm types only integers
    on --set): the schema once refused the documented way of setting a price."""
    from trtops_operator.__main__ import parse_args

    docs = render(cost__gpuHourPrice="2.5", cost__cpuHourPrice="0.04", cost__currency="EUR")
    args = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = parse_args([a for a in args if a.split("=")[0].endswith(("-price", "currency"))])
    assert (flags.gpu_hour_price, flags.cpu_hour_price, flags.currency) == (2.5, 0.04, "EUR")


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            # string maps (labels, annotations) are typed; anything else open is listed
            if node.get("type") == "object" and node.get("additionalProperties") not in (
                False,
                {"type": "string"},
            ):
                open_objects.append(where)
            for key, child in node.items():
                walk(child, f"{where}.{key}")

    walk(schema, "$")
    # Kubernetes types the API server validates (NetworkPolicyPeer, affinity terms).
    assert open_objects == [
        "$.properties.networkPolicy.properties.servingFrom.items",
        "$.properties.networkPolicy.properties.metricsFrom.items",
        "$.properties.affinity.properties.nodeAffinity",
        "$.properties.affinity.properties.podAffinity",
        "$.properties.affinity.properties.podAntiAffinity",
    ]


def test_every_value_is_commented() -> None:
    """Each key in values.yaml has a comment right above it, or sits under a key that has one."""
    undocumented: list[str] = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.strip().startswith("#") or any(d for _, d in stack)
            if not documented:
                value = line.split(":", 1)[1].strip()
                if value and not value.startswith("#"):  # a leaf without a comment
                    undocumented.append(match.group(2))
            stack.append((indent, previous.strip().startswith("#") or any(d for _, d in stack)))
        previous = line
    assert undocumented == []


def test_default_scope_is_the_release_namespace_and_cluster_wide_is_opt_in() -> None:
    """Before, the default was cluster-wide write on Deployments, Services, PDBs and Jobs."""
    docs = render()
    assert find(docs, "ClusterRole")[0]["metadata"]["name"] == "t-trtops-framework"
    assert len(find(docs, "ClusterRole")) == 1
    (role,) = find(docs, "Role", "t-trtops")
    assert role["metadata"]["namespace"] == "trtops-system"
    assert rules_of(role) == EXPECTED_RULES
    args = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=trtops-system" in args
    assert "--all-namespaces" not in args
    proc = helm(*template_args("trtops-system", clusterWide="true", watchNamespaces="{a}"),
                check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "either clusterWide: true or watchNamespaces" in proc.stderr


def test_network_policies_render_for_the_operator_and_each_watched_namespace() -> None:
    docs = render(watchNamespaces="{team-a,team-b}")
    policies = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in
                find(docs, "NetworkPolicy")}  # fmt: skip
    assert set(policies) == {
        ("trtops-system", "t-trtops"),
        ("team-a", "t-trtops-serving"),
        ("team-a", "t-trtops-build"),
        ("team-b", "t-trtops-serving"),
        ("team-b", "t-trtops-build"),
    }
    serving = policies[("team-a", "t-trtops-serving")]["spec"]
    assert serving["podSelector"]["matchLabels"]["trtops.dev/component"] == "serve"
    inference, metrics = serving["ingress"]
    assert {p["port"] for p in inference["ports"]} == {8000, 8001}
    assert inference["from"][0] == {"podSelector": {"matchLabels": {"trtops.dev/client": "true"}}}
    assert [p["port"] for p in metrics["ports"]] == [8002]
    build = policies[("team-a", "t-trtops-build")]["spec"]
    assert build["policyTypes"] == ["Ingress"]
    assert "ingress" not in build  # nothing may connect to a build pod
    assert find(render(networkPolicy__enabled="false"), "NetworkPolicy") == []


def test_all_namespaces_uses_a_cluster_role() -> None:
    docs = render(clusterWide="true")
    roles = {d["metadata"]["name"]: d for d in find(docs, "ClusterRole")}
    assert set(roles) == {"t-trtops", "t-trtops-framework"}
    assert rules_of(roles["t-trtops"]) == EXPECTED_RULES
    assert rules_of(roles["t-trtops-framework"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    assert [r["metadata"]["name"] for r in find(docs, "Role")] == ["t-trtops-leader-election"]
    args = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args


def test_watched_namespaces_get_roles_only() -> None:
    docs = render(watchNamespaces="{team-a,team-b}")
    roles = [r for r in find(docs, "Role") if r["metadata"]["name"] == "t-trtops"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(rules_of(r) == EXPECTED_RULES for r in roles)
    bindings = [b for b in find(docs, "RoleBinding") if b["metadata"]["name"] == "t-trtops"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert {s["namespace"] for b in bindings for s in b["subjects"]} == {"trtops-system"}
    (framework,) = find(docs, "ClusterRole")
    assert rules_of(framework)[("", "namespaces")] == {"list", "watch"}
    args = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_every_rbac_rule_says_why() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(text):
        if line.strip().startswith("- apiGroups:"):
            assert text[i - 1].strip().startswith("#"), f"rule without a comment: line {i + 1}"


def test_operator_deployment_defaults() -> None:
    (deployment,) = find(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    # Leader election makes a rolling update's overlap safe (tests/faults: two operators).
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/trtops/trtops-operator:0.1.0"
    assert "--worker-image=ghcr.io/trtops/trtops-worker:0.1.0" in container["args"]
    assert "--metrics-port=8080" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_digest_pins_the_images() -> None:
    digest = "sha256:" + "a" * 64
    (deployment,) = find(render(image__digest=digest, worker__image__digest=digest), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/trtops/trtops-operator@{digest}"
    assert f"--worker-image=ghcr.io/trtops/trtops-worker@{digest}" in container["args"]


def test_monitoring_is_off_by_default_and_renders_when_asked() -> None:
    docs = render()
    assert find(docs, "ServiceMonitor") == []
    assert find(docs, "ConfigMap") == []
    docs = render(metrics__serviceMonitor__enabled="true", dashboards__enabled="true")
    (monitor,) = find(docs, "ServiceMonitor")
    (service,) = find(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    (dashboard,) = find(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name in ("trtops.json", "trtops-value.json"):  # serving, and baseline against optimized
        shipped = json.loads(dashboard["data"][name])
        assert shipped == json.loads((REPO / "dashboards" / name).read_text())


def test_metrics_off_removes_port_and_service() -> None:
    docs = render(metrics__enabled="false")
    assert find(docs, "Service") == []
    (deployment,) = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=0" in container["args"]


@pytest.mark.cluster
def test_install_dry_run_prints_notes(namespace: str) -> None:
    """`helm install --dry-run=server` against the live cluster (Helm's own kube-version check
    passes) renders NOTES.txt with the namespace scope the values ask for. The CRD is left out:
    the other tests' CRD, created without Helm, cannot be adopted by a release."""
    proc = helm(
        "install",
        "t",
        str(CHART),
        "--dry-run=server",
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        "crds.enabled=false",
    )
    assert f"The operator watches TrtEngines in {namespace}." in proc.stdout
    assert "install the TrtEngine CRD yourself" in proc.stdout
    assert "kubectl get trtengines" in proc.stdout
    # The opt-ins the operator requires (docs/security.md), or nothing is built or weighed.
    assert "trtops.dev/mountable=true" in proc.stdout
    assert "trtops.dev/engine=<engine>" in proc.stdout
    assert "Canary analyses are off until you list your Prometheus" in proc.stdout


@pytest.mark.cluster
@pytest.mark.parametrize(
    "sets",
    [{"clusterWide": "true"}, {"dashboards__enabled": "true"}, {"watchNamespaces": "{NS}"}],
    ids=["all-namespaces", "with-dashboard", "one-namespace"],
)
def test_rendered_chart_is_accepted_by_the_api_server(
    sets: dict[str, str], namespace: str, k8s_api: Any
) -> None:
    """Server-side dry run of everything the chart renders (the CRD included, so the API server
    validates it too), in a namespace that warns on anything below the `restricted` Pod Security
    Standard."""
    from kubernetes import client

    client.CoreV1Api(k8s_api).patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/warn": "restricted"}}}
    )
    sets = {k: v.replace("NS", namespace) for k, v in sets.items()}
    manifest = helm(*template_args(namespace, **sets)).stdout
    proc = subprocess.run(
        [tool("kubectl", "hack/cluster.sh env"), "apply", "--dry-run=server", "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps/t-trtops created (server dry run)" in proc.stdout
    assert "networkpolicy.networking.k8s.io/t-trtops created (server dry run)" in proc.stdout
    assert "PodSecurity" not in proc.stderr


def test_leader_election_is_on_by_default_with_one_lease() -> None:
    docs = render()
    (container,) = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--leader-election-name=t-trtops" in container["args"]
    assert "--standalone" not in container["args"]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]
    (role,) = find(docs, "Role", "t-trtops-leader-election")
    assert role["metadata"]["namespace"] == "trtops-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["t-trtops"],
            "verbs": ["get", "update"],
        },
    ]
    off = render(leaderElection__enabled="false")
    (deployment,) = find(off, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert find(off, "Role", "t-trtops-leader-election") == []
