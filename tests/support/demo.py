"""The local demo (``hack/demo.sh`` runs ``python -m tests.support.demo``), and the helpers it shares
with the end-to-end tests: fill a claim folder with a sample model and its data, and read and write
TrtEngine resources through the API server (the operator's public surface: spec in, status
conditions, plans and revisions out)."""

from __future__ import annotations

import copy
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from tests.support.cluster import REPO
from trtops_worker import samples

GROUP, VERSION, PLURAL = "trtops.dev", "v1alpha1", "trtengines"
SAMPLES = REPO / "samples" / "local"


def load_sample(name: str = "conv-int8.yaml") -> dict[str, Any]:
    """A TrtEngine from ``samples/local/`` as a dict."""
    body: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return body


def fill_claim(folder: Path, model: onnx.ModelProto | None = None, *, name: str = "conv",
               samples_n: int = 32) -> onnx.ModelProto:
    """Write ``models/<name>.onnx``, ``data/calib.npz`` and ``data/val.npz`` (and, as a deliberately
    bad calibration set, ``data/zeros.npz``) into a claim folder; returns the model."""
    model = model or samples.conv_classifier()
    samples.save(model, folder / "models" / f"{name}.onnx")
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    calib = samples.calibration_inputs(model, samples_n, seed=1)
    np.savez(data / "calib.npz", **calib)  # type: ignore[arg-type]  # numpy's stub wants one positional
    np.savez(data / "val.npz", **samples.calibration_inputs(model, samples_n, seed=2))  # type: ignore[arg-type]
    np.savez(data / "zeros.npz", **{k: np.zeros_like(v) for k, v in calib.items()})  # type: ignore[arg-type]
    return model


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Engines:
    """TrtEngine resources of one namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def create(self, body: dict[str, Any]) -> None:
        body = copy.deepcopy(body)
        body["metadata"].pop("namespace", None)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return obj

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        """Merge ``spec`` into the resource's spec, as ``kubectl apply`` of a changed file would."""
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.get(name).get("status", {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    def serving_pods(self, name: str) -> list[Any]:
        selector = f"trtops.dev/engine={name},trtops.dev/component=serve"
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def ready_serving_pods(self, name: str) -> list[Any]:
        def ready(pod: Any) -> bool:
            conds = pod.status.conditions or []
            return not pod.metadata.deletion_timestamp and any(c.type == "Ready" and c.status == "True" for c in conds)

        return [p for p in self.serving_pods(name) if ready(p)]

    def deployments(self, name: str) -> list[Any]:
        return list(self.apps.list_namespaced_deployment(self.ns, label_selector=f"trtops.dev/engine={name}").items)


def infer(url: str, model: str, inputs: dict[str, np.ndarray], *, timeout: float = 30) -> dict[str, np.ndarray]:
    """One OIP v2 inference over HTTP/JSON; returns the outputs by name, shaped."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    body = {"id": "e2e", "inputs": [
        {"name": k, "shape": list(v.shape), "datatype": datatypes[v.dtype], "data": v.ravel().tolist()}
        for k, v in inputs.items()]}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback gateway
        answer = json.load(resp)
    if answer.get("id") != "e2e":
        raise AssertionError(f"request id not echoed: {answer.get('id')!r}")
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in answer["outputs"]}
