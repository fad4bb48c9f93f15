"""A model in S3, end to end with nothing faked: moto's S3 server (IAM authentication on) holds the
model, a Secret holds the credentials, the operator (in-process) makes the build Job with its
``fetch`` init container, the local node agent runs ``trtops-worker fetch`` then ``trtops-worker
build``, and status says what happened: a plan built from the fetched bytes, or the fetch's own
reason for a wrong pin, a missing object and wrong credentials."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Workspace
from tests.support.cluster import wait_for
from tests.support.object_store import S3Server, moto_s3

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with moto_s3(tmp_path) as server:
        server.client().create_bucket(Bucket="models")
        yield server


def engine(name: str, node: str, model: dict[str, Any]) -> dict[str, Any]:
    pin = {"trtops.dev/node-agent": node}
    return {
        "apiVersion": "trtops.dev/v1alpha1",
        "kind": "TrtEngine",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "build": {"precision": "fp32", "backoffLimit": 0, "nodeSelector": pin},
            "serving": {"backend": "onnxruntime", "nodeSelector": pin},
            "storage": {"claimName": "trt-plans"},
        },
    }


def secret(namespace: str, name: str, env: dict[str, str]) -> Any:
    from kubernetes import client

    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace), string_data=env
    )


def test_s3_model_is_fetched_built_and_each_fetch_failure_has_its_reason(
    workspace: Workspace,
    operator: Callable[[str], AbstractContextManager[Any]],
    s3: S3Server,
    k8s_api: Any,
) -> None:
    from kubernetes import client

    engines, ns, node = workspace.engines, workspace.engines.ns, workspace.node
    model = (workspace.claim / "models" / "conv.onnx").read_bytes()
    pin = hashlib.sha256(model).hexdigest()
    s3.client().put_object(Bucket="models", Key="conv/model.onnx", Body=model)
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(ns, secret(ns, "s3", s3.env()))
    wrong = "wrong-secret-value-987"
    core.create_namespaced_secret(ns, secret(ns, "s3-wrong", s3.env(AWS_SECRET_ACCESS_KEY=wrong)))
    uri = "s3://models/conv/model.onnx"
    cases = {
        "good": ({"uri": uri, "sha256": pin, "credentialsSecret": "s3"}, None),
        "bad-pin": (
            {"uri": uri, "sha256": "0" * 64, "credentialsSecret": "s3"},
            "ModelDigestMismatch",
        ),
        "missing": (
            {"uri": "s3://models/conv/absent.onnx", "credentialsSecret": "s3"},
            "ModelNotFound",
        ),
        # Unpinned: engines whose pins match share one build Job (the key is the pin, not the
        # credentials), so a pinned twin of "good" would share its fate.
        "bad-creds": (
            {"uri": uri, "credentialsSecret": "s3-wrong"},
            "ModelAccessDenied",
        ),
    }
    with operator(ns):
        for name, (model_ref, _) in cases.items():
            engines.create(engine(name, node, model_ref))

        def outcomes() -> dict[str, dict[str, Any]] | None:
            conds = {n: engines.condition(n, "Built") for n in cases}
            done = all(
                c.get("status") == "True" or c.get("reason") not in (None, "Building")
                for c in conds.values()
            )
            return conds if done else None

        built = wait_for(outcomes, timeout=240, what="every build to finish")

    for name, (_, reason) in cases.items():
        if reason is None:
            assert built[name]["status"] == "True", built[name]
        else:
            assert (built[name]["status"], built[name]["reason"]) == ("False", reason), built[name]
        assert wrong not in str(built[name])
        assert s3.secret_key not in str(built[name])
    (plan,) = engines.get("good")["status"]["plans"]
    assert plan["backend"] == "onnxruntime"
    # The fetched model sits on the claim under its pin, byte for byte.
    assert (workspace.claim / "sources" / "sha256" / pin / "model.onnx").read_bytes() == model
