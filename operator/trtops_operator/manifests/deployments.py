"""What serves a plan: the serving Deployment of one revision, its HorizontalPodAutoscaler,
and the PodDisruptionBudget over the engine's serving pods."""

from __future__ import annotations

from typing import Any

from trtops_worker import contract

from trtops_operator.config import OperatorConfig
from trtops_operator.keys import target_label
from trtops_operator.manifests.common import (
    CONTAINER_SECURITY,
    GPU_RESOURCE,
    GRPC_PORT,
    HTTP_PORT,
    KEY_ANNOTATION,
    LABEL_MAX,
    MANAGED_BY,
    METRICS_PORT,
    PLANS_MOUNT,
    POD_SECURITY,
    SERVE_SCRATCH,
    Engine,
    PlanRef,
    component_labels,
    gpu_placement,
    owner_reference,
    place,
    serving_selector,
    stamp,
)
from trtops_operator.manifests.sampling import serve_sample_mount


def shadow_url(engine: Engine, service: str | None = None) -> str:
    """Where stable pods send shadow requests: the ``<engine>-canary`` Service, which exists
    during a canary only. Every revision gets the same address, so no pod restarts when a
    canary begins or ends (worker/trtops_worker/serve/shadow.py). ``service``: another
    Service (an experiment's variants)."""
    host = f"{service or engine.name + '-canary'}.{engine.namespace}.svc"
    return f"http://{host}:{HTTP_PORT}/v2/models/{engine.model_name}/infer"


def render_deployment(
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
    experiment = engine.spec.experiment
    if experiment is not None:  # the baseline shadows to every variant (experiment/step.py)
        args += [
            "--shadow-url",
            shadow_url(engine, f"{engine.name}-experiment"),
            "--shadow-percent",
            f"{experiment.shadow_percent:g}",
        ]
    elif analysis is not None and analysis.shadow is not None:
        args += [
            "--shadow-url",
            shadow_url(engine),
            "--shadow-percent",
            f"{analysis.shadow.percent:g}",
        ]

    # One Deployment per (revision, target): stable and canary run side by side, and their
    # selectors must not overlap or the two Deployments would fight over each other's pods.
    selector = {
        **serving_selector(engine),
        "trtops.dev/target": target_label(plan.target),
        "trtops.dev/revision": revision,
    }
    labels = {
        **component_labels(engine, "serve", plan.target),
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
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "plans", "mountPath": PLANS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own scratch volume
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the worker never talks to the API server
        "securityContext": POD_SECURITY,
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
        pod_spec.update(gpu_placement(plan.target, plan.compute_capability))
    sample = serve_sample_mount(engine)
    if sample is not None:  # only the engine's sample folder is writable (manifests/sampling.py)
        container["args"] += sample.args
        container["env"].append(sample.env)
        container["volumeMounts"].append(sample.mount)
        pod_spec["volumes"].append(sample.volume)
    place(pod_spec, serving.node_selector, serving.tolerations)
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
        # The revision's HorizontalPodAutoscaler owns the count (render_hpa): an applied
        # ``replicas`` would undo its every decision.
        del deployment["spec"]["replicas"]
    return stamp(deployment)


# Scale-down that never follows a dip: 5 minutes of lower load, then one pod a minute.
_SCALE_DOWN = {
    "stabilizationWindowSeconds": 300,
    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
}
AUTOSCALING_METRICS = {
    "inflight": contract.METRIC_INFLIGHT,
    "queue": contract.METRIC_QUEUE_DEPTH,
}


def render_hpa(engine: Engine, *, name: str, revision: str, floor: int = 0) -> dict[str, Any]:
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
    return stamp(hpa)


def render_pdb(engine: Engine) -> dict[str, Any]:
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
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": serving_selector(engine)}},
    }
    return stamp(pdb)
