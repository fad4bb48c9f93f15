"""The build Job: ``trtops-worker build`` for one (key, target), with a ``fetch`` init
container when an input is remote."""

from __future__ import annotations

from typing import Any

from trtops_worker import contract
from trtops_worker.sources import is_remote

from trtops_operator.config import OperatorConfig
from trtops_operator.manifests.common import (
    BUILD_SCRATCH,
    CONTAINER_SECURITY,
    EXTRA_CLAIMS_MOUNT,
    GCS_CREDENTIALS_KEY,
    GPU_RESOURCE,
    KEY_ANNOTATION,
    LABEL_MAX,
    PLANS_MOUNT,
    POD_SECURITY,
    SOURCE_SECRET_MOUNT,
    TERMINATION_LOG,
    Engine,
    component_labels,
    gpu_placement,
    owner_reference,
    place,
    resolve_uri,
    stamp,
)
from trtops_operator.manifests.sampling import build_sample_args

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


def render_build_job(
    engine: Engine,
    target: str | None,
    key: str,
    *,
    name: str,
    config: OperatorConfig,
    compute_capability: str | None = None,
    baseline: str | None = None,
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
    args += build_sample_args(engine, calibrate=build.precision in ("int8", "fp8"))
    if baseline is not None:  # a scheduled rebuild measures the serving plan too (rebuild.py)
        args += ["--baseline", baseline]
    if target is not None:
        args += ["--gpu-product", target]
    args += ["--termination-log", TERMINATION_LOG]

    labels = {**component_labels(engine, "build", target), "trtops.dev/key": key[:LABEL_MAX]}
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
        "securityContext": CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the worker never talks to the API server
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if fetches:
        _add_fetch(pod_spec, container, fetches, spec.model.credentials_secret)
    if target is not None:
        container["resources"]["limits"][GPU_RESOURCE] = "1"
        pod_spec.update(gpu_placement(target, compute_capability))
    place(pod_spec, build.node_selector, build.tolerations)
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
    return stamp(job)


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
