"""Request sampling in the rendered objects: only the engine's sample folder becomes writable in
a serving pod, and only when sampling is on; builds read the sample; keys and Job names of
engines that do not use it stay as they were."""

from __future__ import annotations

from typing import Any

from trtops_operator import keys, manifests
from trtops_operator.models import TrtEngineSpec

from tests.operator.test_manifests import CONFIG, engine

PRODUCT = "NVIDIA-H100-80GB-HBM3"


def _deployment(e: manifests.Engine) -> dict[str, Any]:
    plan = manifests.PlanRef(
        target=PRODUCT, key="k" * 64, path="/plans/x", precision="int8", backend="tensorrt"
    )
    return manifests.render_deployment(e, plan, name="d", revision="r1", config=CONFIG)


def _pod(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = obj["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _writable_claims(obj: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(mount path, subPath) of every claim mount a container may write to."""
    pod, container = _pod(obj)
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    return [
        (m["mountPath"], m.get("subPath"))
        for m in container["volumeMounts"]
        if m["name"] in claims and not m.get("readOnly") and not claims[m["name"]].get("readOnly")
    ]


def test_serving_writes_nothing_on_the_claim_without_sampling() -> None:
    e = engine("resnet-int8.yaml")
    assert _writable_claims(_deployment(e)) == []
    assert "--sample-dir" not in _pod(_deployment(e))[1]["args"]


def test_sampling_makes_only_the_engines_sample_folder_writable() -> None:
    e = engine("resnet-int8-daily.yaml")
    dep = _deployment(e)
    assert _writable_claims(dep) == [("/samples", "samples/resnet50-daily")]
    _, container = _pod(dep)
    plans = next(m for m in container["volumeMounts"] if m["mountPath"] == "/plans")
    assert plans["readOnly"] is True  # plans stay read-only
    args = container["args"]
    assert args[args.index("--sample-dir") + 1] == "/samples"
    assert args[args.index("--sample-max-bytes") + 1] == "67108864"
    assert args[args.index("--sample-window-seconds") + 1] == "86400"
    assert {
        "name": "TRTOPS_POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_build_calibrates_from_the_sample_folder() -> None:
    e = engine("resnet-int8-daily.yaml")
    key = keys.build_key(e.spec, PRODUCT, CONFIG.worker_image)
    job = manifests.render_build_job(e, PRODUCT, key, name="j", config=CONFIG)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--calibration-sample") + 1] == "/plans/samples/resnet50-daily"
    assert args[args.index("--calibration-min-sample-rows") + 1] == "256"
    assert args[args.index("--calibration") + 1] == "/mnt/claims/models/resnet50/calib.npz"
    assert "--validation-sample" not in args


def _with(e: manifests.Engine, **build: Any) -> TrtEngineSpec:
    body = e.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for path, value in build.items():
        *parents, leaf = path.split(".")
        node = body
        for p in parents:
            node = node[p]
        node[leaf] = value
    return TrtEngineSpec.model_validate(body)


def test_keys_change_with_the_source_and_the_rebuild_and_not_otherwise() -> None:
    e = engine("resnet-int8.yaml")
    base = keys.build_key(e.spec, PRODUCT, CONFIG.worker_image)
    explicit_uri = _with(e, **{"build.calibration.source": "uri"})
    assert keys.build_key(explicit_uri, PRODUCT, CONFIG.worker_image) == base
    sampled = _with(
        e,
        **{"build.calibration.source": "sample", "serving.sampling": {"enabled": True}},
    )
    assert keys.build_key(sampled, PRODUCT, CONFIG.worker_image) != base
    rebuilt = keys.build_key(e.spec, PRODUCT, CONFIG.worker_image, rebuild="2026-12-01T03:00:00Z")
    assert rebuilt != base
    # the gate's Job name is as before when validation comes from its file
    gate = keys.gate_json(e.spec)
    assert gate is not None
    assert "source" not in gate["validation"]
