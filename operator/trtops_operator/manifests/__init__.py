"""Every object the operator owns, rendered as plain dicts (no Kubernetes client).

Each function takes the engine (name, namespace, uid, typed spec) and returns the full desired
object, so it can be compared with what exists (``spec_hash``), applied as is, and tested against
golden YAML. The worker's command lines here are its contract (``trtops-worker build|serve``).
(The worker's TensorRT build is ``trtops_worker.builder``; this package only writes manifests.)

Modules: ``common`` (identity, labels, hash annotation, placement, URIs), ``jobs`` (the build
Job), ``deployments`` (serving Deployment, HorizontalPodAutoscaler, PodDisruptionBudget),
``network`` (Services, NetworkPolicy).
"""

from trtops_operator.manifests.common import (
    GRPC_PORT,
    HASH_ANNOTATION,
    HTTP_PORT,
    KEY_ANNOTATION,
    METRICS_PORT,
    PLANS_MOUNT,
    Engine,
    PlanRef,
    owner_reference,
    resolve_uri,
    spec_hash,
    stamped_hash,
)
from trtops_operator.manifests.deployments import (
    AUTOSCALING_METRICS,
    render_deployment,
    render_hpa,
    render_pdb,
    shadow_url,
)
from trtops_operator.manifests.jobs import render_build_job
from trtops_operator.manifests.network import render_network_policy, render_service

__all__ = [
    "AUTOSCALING_METRICS",
    "GRPC_PORT",
    "HASH_ANNOTATION",
    "HTTP_PORT",
    "KEY_ANNOTATION",
    "METRICS_PORT",
    "PLANS_MOUNT",
    "Engine",
    "PlanRef",
    "owner_reference",
    "render_build_job",
    "render_deployment",
    "render_hpa",
    "render_network_policy",
    "render_pdb",
    "render_service",
    "resolve_uri",
    "shadow_url",
    "spec_hash",
    "stamped_hash",
]
