"""Pure builders of every object the operator owns: plain dicts, no Kubernetes client.

Each builder takes the engine (name, namespace, uid, typed spec) and returns the full desired
object, so it can be compared with what exists (``spec_hash``), applied as is, and tested against
golden YAML. The worker's command lines here are its contract (``trtops-worker build|serve``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtops_worker import contract
from trtops_worker.cachekey import canonical_json
from trtops_worker.sources import is_remote, local_path

from trtops_operator import GROUP, KIND, VERSION
from trtops_operator.config import OperatorConfig
from trtops_operator.keys import target_label
from trtops_operator.models import Toleration, TrtEngineSpec

__all__ = [
    "HASH_ANNOTATION",
    "KEY_ANNOTATION",
    "PLANS_MOUNT",
    "Engine",
    "PlanRef",
    "build_deployment",
    "build_hpa",
    "build_job",
    "build_network_policy",
    "build_pdb",
    "build_service",
    "owner_reference",
    "policy_problem",
    "resolve_uri",
    "shadow_url",
    "spec_hash",
    "stamped_hash",
]

PLANS_MOUNT = "/plans"
SOURCE_SECRET_MOUNT = "/var/run/secrets/trtops/source"  # noqa: S105 - a mount path
GCS_CREDENTIALS_KEY = "gcs-credentials.json"
EXTRA_CLAIMS_MOUNT = "/mnt/claims"
TERMINATION_LOG = "/dev/termination-log"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# GPU Feature Discovery's labels of a node's GPU compute capability (e.g. 9 and 0 for 9.0).
GPU_COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
MANAGED_BY = contract.MANAGED_BY
HASH_ANNOTATION = contract.ANNOTATION_SPEC_HASH
KEY_ANNOTATION = contract.ANNOTATION_KEY
LABEL_MAX = 63
# Scratch (/tmp, HOME) of build and serving pods: bounded, so that a runaway writer is evicted
# instead of filling its node's disk. A build's TensorRT timing cache and tactic scratch fit.
BUILD_SCRATCH, SERVE_SCRATCH = "8Gi", "1Gi"
CLIENT_LABEL = "trtops.dev/client"  # a pod that may call an engine: the engine's name, or "true"


@dataclass(frozen=True)
class Engine:
    """The identity and the typed spec of one TrtEngine."""

    name: str
    namespace: str
    uid: str
    spec: TrtEngineSpec

    @property
    def model_name(self) -> str:
        return self.spec.serving.model_name or self.name


@dataclass(frozen=True)
class PlanRef:
    """What serving needs from a built plan."""

    target: str | None  # GPU product; None for the CPU (onnxruntime) build
    key: str
    path: str  # artifact directory under PLANS_MOUNT
    precision: str
    backend: str
    compute_capability: str | None = None  # the product's pin: serve on such GPUs only


def owner_reference(engine: Engine, *, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": engine.name,
        "uid": engine.uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def spec_hash(obj: dict[str, Any]) -> str:
    """Hash of an object as built (before the hash annotation is added): unchanged -> no write."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()[:16]


def stamped_hash(obj: Mapping[str, Any]) -> str:
    """The hash annotation an object carries ("" for none): built here, or read from a watch."""
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION, ""))


def _stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Add the hash annotation to a fresh deep copy (no dict is shared between objects)."""
    obj = json.loads(canonical_json(obj))
    obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(obj)
    return obj


def policy_problem(spec: TrtEngineSpec, config: OperatorConfig) -> str | None:
    """What in ``spec`` the installer's policy does not allow (None: all allowed): a path that
    leaves its claim (a ``..`` segment), a toleration or nodeSelector key off the installer's
    lists, or a toleration of every taint (empty key) unless the list is ``*``. A spec that a
    shared cluster's installer did not allow would otherwise place pods on any node, e.g. a
    control-plane node."""
    uris = [("spec.model.uri", spec.model.uri)]
    if spec.build.calibration is not None:
        uris.append(("spec.build.calibration.uri", spec.build.calibration.uri))
    if spec.build.accuracy is not None:
        uris.append(("spec.build.accuracy.validation.uri", spec.build.accuracy.validation.uri))
    for field, uri in uris:
        if not is_remote(uri) and ".." in uri.removeprefix("pvc://").split("/"):
            return f"{field}: '..' is not allowed; paths stay inside their claim"
    tol_keys, sel_keys = config.toleration_keys, config.node_selector_keys
    for where, tolerations, selector in (
        ("build", spec.build.tolerations, spec.build.node_selector),
        ("serving", spec.serving.tolerations, spec.serving.node_selector),
    ):
        for tol in tolerations:
            if "*" in tol_keys:
                break
            if not tol.key:
                return (
                    f"spec.{where}.tolerations: a toleration with no key tolerates every taint"
                    " (control-plane nodes included); the operator's installer does not allow it"
                )
            if tol_keys and tol.key not in tol_keys:
                return (
                    f"spec.{where}.tolerations: key {tol.key} is not one the operator's installer"
                    f" allows ({', '.join(sorted(tol_keys))})"
                )
        for key in selector:
            if sel_keys and "*" not in sel_keys and key not in sel_keys:
                return (
                    f"spec.{where}.nodeSelector: key {key} is not one the operator's installer"
                    f" allows ({', '.join(sorted(sel_keys))})"
                )
    return None


def resolve_uri(uri: str, storage_claim: str, sha256: str | None = None) -> tuple[str, str | None]:
    """Map a spec URI to a path in the pod, and the extra claim to mount read-only (if any).

    ``pvc://CLAIM/p`` is ``/plans/p`` when CLAIM is the storage claim, else ``/mnt/claims/CLAIM/p``;
    a relative path lives on the storage claim; a remote URI (s3, gs, https, hf) is where the
    ``fetch`` init container puts it on the storage claim (:mod:`trtops_worker.sources`).
    """
    if is_remote(uri):
        return f"{PLANS_MOUNT}/{local_path(uri, sha256)}", None
    if uri.startswith("pvc://"):
        claim, _, rest = uri.removeprefix("pvc://").partition("/")
        if claim == storage_claim:
            return f"{PLANS_MOUNT}/{rest}", None
        return f"{EXTRA_CLAIMS_MOUNT}/{claim}/{rest}", claim
    return f"{PLANS_MOUNT}/{uri.lstrip('/')}", None


def _labels(engine: Engine, component: str, target: str | None) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": f"trtops-{component}",
        "trtops.dev/engine": engine.name,
        "trtops.dev/component": component,
        "trtops.dev/target": target_label(target),
    }


def _gpu_placement(product: str, compute_capability: str | None = None) -> dict[str, Any]:
    selector = {GPU_PRODUCT_LABEL: product}
    if compute_capability is not None:  # a pinned product: nodes whose GPU has this capability
        major, _, minor = compute_capability.partition(".")
        selector |= {GPU_COMPUTE_MAJOR_LABEL: major, GPU_COMPUTE_MINOR_LABEL: minor}
    return {
        "nodeSelector": selector,
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }


def _place(
    pod_spec: dict[str, Any], node_selector: Mapping[str, str], tolerations: list[Toleration]
) -> None:
    """Add the spec's node selector and tolerations to the pod's own (the GPU placement's);
    nothing is added when they are empty, so such pod specs read as before the fields existed."""
    if node_selector:
        pod_spec["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), **node_selector}
    if tolerations:
        merged: list[dict[str, Any]] = list(pod_spec.get("tolerations", []))
        # A repeat of the GPU toleration (or of another entry) is listed once.
        merged += [t for t in (tol.pod_json() for tol in tolerations) if t not in merged]
        pod_spec["tolerations"] = merged


_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


# A failure the worker marks permanent (its inputs must change: model, calibration, config,
# accuracy) fails the Job at once instead of spending backoffLimit on the same answer; a pod
# evicted or preempted (DisruptionTarget) is retried without counting against backoffLimit.
_POD_FAILURE_POLICY = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": contract.BUILD_CONTAINER,
                "operator": "In",
                "values": list(contract.PERMANENT_EXIT_CODES),
            },
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}


def build_job(
    engine: Engine,
    target: str | None,
    key: str,
    *,
    name: str,
    config: OperatorConfig,
    compute_capability: str | None = None,
) -> dict[str, Any]:
    """The build Job of one (key, target): ``trtops-worker build`` with the result in the
    termination message. ``name`` comes from :func:`trtops_operator.keys.job_name`;
    ``compute_capability``: the target's pin (the Job runs on such GPUs only)."""
    spec = engine.spec
    build = spec.build
    claim = spec.storage.claim_name
    extra_claims: list[str] = []
    fetches: list[list[str]] = []  # ROLE URI DEST SHA256 for the fetch init container

    def path(uri: str, role: str, sha256: str | None = None) -> str:
        resolved, extra = resolve_uri(uri, claim, sha256)
        if extra and extra not in extra_claims:
            extra_claims.append(extra)
        if is_remote(uri):
            fetches.append([role, uri, resolved, sha256 or "-"])
        return resolved

    model = path(spec.model.uri, "model", spec.model.sha256)
    args = ["build", "--model", model, "--precision", build.precision]
    args += ["--backend", spec.serving.backend, "--storage", PLANS_MOUNT]
    if spec.model.sha256:
        args += ["--model-sha256", spec.model.sha256]
    if build.calibration is not None and build.precision in ("int8", "fp8"):
        cal = build.calibration
        args += ["--calibration", path(cal.uri, "calibration", cal.sha256)]
        args += ["--calibration-method", cal.method]
        args += ["--calibration-max-samples", str(cal.max_samples)]
    for profile in build.profiles:
        args += ["--profile", profile.flag()]
    args += ["--optimization-level", str(build.optimization_level)]
    args += ["--workspace-mib", str(build.workspace_mib)]
    if build.accuracy is not None:
        acc = build.accuracy
        args += ["--validation", path(acc.validation.uri, "validation", acc.validation.sha256)]
        for flag, value in (
            ("--min-top1-agreement", acc.min_top1_agreement),
            ("--max-mean-abs-error", acc.max_mean_abs_error),
            ("--min-cosine-similarity", acc.min_cosine_similarity),
            ("--max-relative-error", acc.max_relative_error),
        ):
            if value is not None:
                args += [flag, repr(float(value))]
        for output, kind in sorted((acc.output_kinds or {}).items()):
            args += ["--output-kind", f"{output}={kind}"]
    if target is not None:
        args += ["--gpu-product", target]
    args += ["--termination-log", TERMINATION_LOG]

    labels = {**_labels(engine, "build", target), "trtops.dev/key": key[:LABEL_MAX]}
    volumes: list[dict[str, Any]] = [
        {"name": "plans", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "tmp", "emptyDir": {"sizeLimit": BUILD_SCRATCH}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "plans", "mountPath": PLANS_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own scratch volume
    ]
    for i, extra in enumerate(extra_claims):
        volumes.append(
            {"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": extra, "readOnly": True}}
        )
        mounts.append(
            {"name": f"claim-{i}", "mountPath": f"{EXTRA_CLAIMS_MOUNT}/{extra}", "readOnly": True}
        )
    container: dict[str, Any] = {
        "name": contract.BUILD_CONTAINER,
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["trtops-worker"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],  # noqa: S108 - the pod's emptyDir
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"memory": config.build_memory_limit},
        },
        "securityContext": _CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the worker never talks to the API server
        "securityContext": _POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if fetches:
        _add_fetch(pod_spec, container, fetches, spec.model.credentials_secret)
    if target is not None:
        container["resources"]["limits"][GPU_RESOURCE] = "1"
        pod_spec.update(_gpu_placement(target, compute_capability))
    _place(pod_spec, build.node_selector, build.tolerations)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": engine.namespace,
            "labels": labels,
            "annotations": {KEY_ANNOTATION: key},
            "ownerReferences": [owner_reference(engine, controller=False)],
        },
        "spec": {
            "backoffLimit": build.backoff_limit,
            "podFailurePolicy": _POD_FAILURE_POLICY,
            "activeDeadlineSeconds": build.timeout_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
    return _stamp(job)


def _add_fetch(
    pod_spec: dict[str, Any],
    build: dict[str, Any],
    fetches: list[list[str]],
    secret: str | None,
) -> None:
    """The ``fetch`` init container: copies the remote inputs onto the claim before ``build``
    starts, in the build container's image, mounts and security context. Only this container
    sees the credentials Secret; its failure message lands in its own termination message."""
    args = ["fetch"]
    for get in fetches:
        args += ["--get", *get]
    env = [dict(e) for e in build["env"]]
    init: dict[str, Any] = {
        **{k: build[k] for k in ("image", "imagePullPolicy", "command", "securityContext")},
        "name": contract.FETCH_CONTAINER,
        "args": [*args, "--termination-log", TERMINATION_LOG],
        "env": env,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [dict(m) for m in build["volumeMounts"]],
    }
    if secret:
        init["envFrom"] = [{"secretRef": {"name": secret}}]
        if any(uri.startswith("gs://") for _, uri, _, _ in fetches):
            # gcsfs reads a service-account key from a file, not from the environment.
            pod_spec["volumes"].append(
                {"name": "source-credentials", "secret": {"secretName": secret}}
            )
            init["volumeMounts"].append(
                {"name": "source-credentials", "mountPath": SOURCE_SECRET_MOUNT, "readOnly": True}
            )
            env.append(
                {
                    "name": "GOOGLE_APPLICATION_CREDENTIALS",
                    "value": f"{SOURCE_SECRET_MOUNT}/{GCS_CREDENTIALS_KEY}",
                }
            )
    pod_spec["initContainers"] = [init]


def _serving_selector(engine: Engine) -> dict[str, str]:
    return {"trtops.dev/engine": engine.name, "trtops.dev/component": "serve"}


def shadow_url(engine: Engine) -> str:
    """Where stable pods send shadow requests: the ``<engine>-canary`` Service, which exists
    during a canary only. Every revision gets the same address, so no pod restarts when a
    canary begins or ends (worker/trtops_worker/serve/shadow.py)."""
    host = f"{engine.name}-canary.{engine.namespace}.svc"
    return f"http://{host}:{HTTP_PORT}/v2/models/{engine.model_name}/infer"


def build_deployment(
    engine: Engine,
    plan: PlanRef,
    *,
    name: str,
    revision: str,
    config: OperatorConfig,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The serving Deployment of one plan: ``trtops-worker serve``, pinned to the plan's GPU.
    ``replicas`` overrides the spec's count (a canary runs fewer pods than stable)."""
    serving = engine.spec.serving
    args = ["serve", "--artifact-dir", plan.path, "--backend", plan.backend]
    if serving.cpu_fallback:
        args.append("--cpu-fallback")
    args += [
        "--model-name",
        engine.model_name,
        "--revision",
        revision,
        "--precision",
        plan.precision,
    ]
    args += ["--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT)]
    args += ["--metrics-port", str(METRICS_PORT)]
    if serving.batching is not None:
        args += ["--max-batch-size", str(serving.batching.max_batch_size)]
        args += ["--max-queue-delay-us", str(serving.batching.max_queue_delay_microseconds)]
    analysis = engine.spec.rollout.analysis if engine.spec.rollout else None
    if analysis is not None and analysis.shadow is not None:
        args += [
            "--shadow-url",
            shadow_url(engine),
            "--shadow-percent",
            f"{analysis.shadow.percent:g}",
        ]

    # One Deployment per (revision, target): stable and canary run side by side, and their
    # selectors must not overlap or the two Deployments would fight over each other's pods.
    selector = {
        **_serving_selector(engine),
        "trtops.dev/target": target_label(plan.target),
        "trtops.dev/revision": revision,
    }
    labels = {
        **_labels(engine, "serve", plan.target),
        "trtops.dev/revision": revision,
        "trtops.dev/key": plan.key[:LABEL_MAX],
    }
    resources: dict[str, Any] = {}
    if serving.resources is not None:
        resources = serving.resources.model_dump(mode="json", exclude_none=True)
    # Never BestEffort: a pod without a memory limit can take its node's memory from others.
    requests, limits = resources.setdefault("requests", {}), resources.setdefault("limits", {})
    if "memory" not in requests and "memory" not in limits:
        requests["memory"], limits["memory"] = (
            config.serve_memory_request,
            config.serve_memory_limit,
        )
    elif "memory" not in limits:
        limits["memory"] = requests["memory"]  # (a limit alone is the request too)
    if not requests:
        del resources["requests"]
    if plan.target is not None and plan.backend == "tensorrt":
        resources["limits"][GPU_RESOURCE] = "1"
    container: dict[str, Any] = {
        "name": contract.SERVE_CONTAINER,
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["trtops-worker"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],  # noqa: S108 - the pod's emptyDir
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        # Loading a large plan takes a while; liveness starts counting only after this passes.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "resources": resources,
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "plans", "mountPath": PLANS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own scratch volume
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the worker never talks to the API server
        "securityContext": _POD_SECURITY,
        "containers": [container],
        "volumes": [
            {
                "name": "plans",
                "persistentVolumeClaim": {
                    "claimName": engine.spec.storage.claim_name,
                    "readOnly": True,
                },
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": SERVE_SCRATCH}},
        ],
    }
    if plan.target is not None:
        pod_spec.update(_gpu_placement(plan.target, plan.compute_capability))
    _place(pod_spec, serving.node_selector, serving.tolerations)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": engine.namespace,
            "labels": labels,
            "annotations": {KEY_ANNOTATION: plan.key},
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "replicas": serving.replicas if replicas is None else replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            # Surge first: a rolling update never takes serving capacity away.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    if serving.autoscaling is not None:
        # The revision's HorizontalPodAutoscaler owns the count (build_hpa): an applied
        # ``replicas`` would undo its every decision.
        del deployment["spec"]["replicas"]
    return _stamp(deployment)


# Scale-down that never follows a dip: 5 minutes of lower load, then one pod a minute.
_SCALE_DOWN = {
    "stabilizationWindowSeconds": 300,
    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
}
AUTOSCALING_METRICS = {
    "inflight": contract.METRIC_INFLIGHT,
    "queue": contract.METRIC_QUEUE_DEPTH,
}


def build_hpa(engine: Engine, *, name: str, revision: str, floor: int = 0) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of serving Deployment ``name`` (``spec.serving.autoscaling``
    must be set): a Pods metric, the per-pod average of the worker's gauge, from a custom-metrics
    adapter. ``floor`` raises ``minReplicas`` (capped at ``maxReplicas``): the canary's share of
    the stable pods, or all of them before a promotion moves the traffic."""
    auto = engine.spec.serving.autoscaling
    assert auto is not None
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": engine.namespace,
            "labels": {
                **MANAGED_BY,
                "trtops.dev/engine": engine.name,
                "trtops.dev/revision": revision,
            },
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min(max(auto.min_replicas, floor), auto.max_replicas),
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": AUTOSCALING_METRICS[auto.metric]},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": auto.target_average_value,
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": _SCALE_DOWN},
        },
    }
    return _stamp(hpa)


def build_service(
    engine: Engine, *, revision: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A Service in front of the engine's serving pods: of every revision (``revision=None``:
    plain rollouts and the replica-ratio router, where pod counts are the traffic split) or of
    one revision (the stable ``<engine>`` and ``<engine>-canary`` Services that a Gateway API
    or Istio router weighs against each other)."""
    selector = _serving_selector(engine)
    if revision is not None:
        selector = {**selector, "trtops.dev/revision": revision}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name or engine.name,
            "namespace": engine.namespace,
            "labels": {**MANAGED_BY, "trtops.dev/engine": engine.name},
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }
    return _stamp(service)


def build_network_policy(engine: Engine) -> dict[str, Any]:
    """Who may connect to the engine's serving pods: inference (http, grpc) from pods of its
    namespace labelled ``trtops.dev/client`` with the engine's name (or ``"true"``: any engine)
    and from namespaces labelled ``trtops.dev/gateway: "true"`` (a Gateway, a mesh ingress);
    the metrics port from namespaces labelled ``trtops.dev/monitoring: "true"``; with
    ``rollout.analysis.shadow``, inference from the engine's own serving pods too. Once a policy
    selects the pods, every other connection is refused (where the CNI enforces policies)."""
    inference = [
        {
            "podSelector": {
                "matchExpressions": [
                    {"key": CLIENT_LABEL, "operator": "In", "values": [engine.name, "true"]}
                ]
            }
        },
        {"namespaceSelector": {"matchLabels": {"trtops.dev/gateway": "true"}}},
    ]
    analysis = engine.spec.rollout.analysis if engine.spec.rollout else None
    if analysis is not None and analysis.shadow is not None:
        # stable pods send shadow requests to the canary's (serve/shadow.py)
        inference.append({"podSelector": {"matchLabels": _serving_selector(engine)}})
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": engine.name,
            "namespace": engine.namespace,
            "labels": {**MANAGED_BY, "trtops.dev/engine": engine.name},
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "podSelector": {"matchLabels": _serving_selector(engine)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": inference,
                    "ports": [
                        {"port": HTTP_PORT, "protocol": "TCP"},
                        {"port": GRPC_PORT, "protocol": "TCP"},
                    ],
                },
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"trtops.dev/monitoring": "true"}}}
                    ],
                    "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
                },
            ],
        },
    }
    return _stamp(policy)


def build_pdb(engine: Engine) -> dict[str, Any]:
    """At most one serving pod of the engine voluntarily evicted at a time (replicas > 1 only)."""
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": engine.name,
            "namespace": engine.namespace,
            "labels": {**MANAGED_BY, "trtops.dev/engine": engine.name},
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _serving_selector(engine)}},
    }
    return _stamp(pdb)
