"""The gate's thresholds fit what each output is, and the self-benchmark's memory figure is the
model's: metrics tables, then real builds on ONNX Runtime (CPU) of models made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from trtops_worker.builder import pipeline
from trtops_worker.builder.accuracy import (
    OutputKind,
    Thresholds,
    evaluate,
    output_kinds,
    output_metrics,
)
from trtops_worker.builder.engine import EngineSettings
from trtops_worker.builder.engine_onnxruntime import OnnxRuntimeBackend
from trtops_worker.builder.errors import AccuracyError

from tests.builder.conftest import RunBuild, SampleModel, save_npz


def _model(path: Path, layers: list[np.ndarray], output: str, head: str | None = None) -> Path:
    """x [N, layers[0].shape[0]] -> MatMul chain (-> ``head`` op) -> ``output``."""
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(layers):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        out = output if i == len(layers) - 1 and head is None else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [out]))
        x = out
    if head is not None:
        nodes.append(helper.make_node(head, [x], [output], axis=-1))
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", layers[0].shape[0]])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", layers[-1].shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _kinds(path: Path) -> dict[str, OutputKind]:
    return output_kinds(onnx.load(str(path)).graph)


def test_output_kinds_are_declared_or_detected(tmp_path: Path) -> None:
    w = [np.ones((4, 10))]
    assert _kinds(_model(tmp_path / "a.onnx", w, "logits")) == {"logits": "class-scores"}
    assert _kinds(_model(tmp_path / "b.onnx", w, "y", head="Softmax")) == {"y": "class-scores"}
    embedding = _model(tmp_path / "c.onnx", w, "sentence_embedding")
    assert _kinds(embedding) == {"sentence_embedding": "embedding"}
    assert _kinds(_model(tmp_path / "d.onnx", [np.ones((4, 1))], "price")) == {
        "price": "regression"
    }
    declared = output_kinds(onnx.load(str(embedding)).graph, {"sentence_embedding": "class-scores"})
    assert declared == {"sentence_embedding": "class-scores"}


def _noisy_embedding() -> tuple[np.ndarray, np.ndarray]:
    """384-dim outputs whose direction barely moves but whose largest dimension often does (what
    FP16 does to an embedding)."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 384))
    return ref, ref + 0.08 * rng.standard_normal(ref.shape)


def test_an_embedding_is_not_judged_by_top1_unless_the_user_sets_it() -> None:
    metrics = {"embedding": output_metrics(*_noisy_embedding())}
    m = metrics["embedding"]
    assert m.top1_agreement is not None
    assert m.top1_agreement < 0.95  # argmax moves...
    assert m.cosine_similarity > 0.99  # ...the embedding does not
    kinds: dict[str, OutputKind] = {"embedding": "embedding"}
    assert evaluate(metrics, Thresholds(), kinds) == []
    # Taken for class scores (the old default) it was refused for the wrong reason:
    assert evaluate(metrics, Thresholds(), {"embedding": "class-scores"})[0].startswith(
        "embedding (class-scores): top-1 agreement"
    )
    set_by_user = evaluate(metrics, Thresholds(min_top1_agreement=0.99), kinds)
    assert len(set_by_user) == 1
    assert "top-1 agreement" in set_by_user[0]
    assert set_by_user[0].endswith("< 0.99 (set)")


def test_a_refusal_leads_with_the_threshold_that_matters() -> None:
    ref, _ = _noisy_embedding()
    cand = ref + 1.5 * np.random.default_rng(1).standard_normal(ref.shape)  # a broken INT8
    metrics = {"embedding": output_metrics(ref, cand)}
    problems = evaluate(metrics, Thresholds(), {"embedding": "embedding"})
    assert problems[0].startswith("embedding (embedding): cosine similarity")
    assert problems[0].endswith("(default for embedding)")
    assert "relative error" in problems[1]
    # A bound the user set comes first, whatever the kind's defaults say.
    first = evaluate(metrics, Thresholds(max_mean_abs_error=0.01), {"embedding": "embedding"})[0]
    assert first.startswith("embedding (embedding): mean abs error")


def test_a_regression_is_judged_by_relative_error() -> None:
    ref = np.linspace(1.0, 100.0, 50).reshape(50, 1)
    kinds: dict[str, OutputKind] = {"price": "regression"}
    assert evaluate({"price": output_metrics(ref, ref * 1.01)}, Thresholds(), kinds) == []
    problems = evaluate({"price": output_metrics(ref, ref * 1.3)}, Thresholds(), kinds)
    assert problems == ["price (regression): relative error 0.3 > 0.1 (default for regression)"]


# --- real builds -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A sentence-embedding-shaped model (64 features -> 384 dims) and 32 inputs."""
    folder = tmp_path_factory.mktemp("embedder")
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((64, 384)) / 8, rng.standard_normal((384, 384)) / 20]
    model = _model(folder / "embedder.onnx", layers, "embedding")
    data = save_npz(folder / "inputs.npz", {"x": rng.standard_normal((32, 64)).astype(np.float32)})
    return model, data


def test_an_embedding_build_gets_embedding_thresholds(
    run_build: RunBuild, embedder: tuple[Path, Path]
) -> None:
    model, data = embedder
    code, result = run_build("--model", model, "--precision", "fp16", "--validation", data)
    assert code == 0, result
    metadata = Path(result["path"]) / "metadata.json"
    applied = json.loads(metadata.read_text())["accuracy"]["thresholds"]
    assert applied == {
        "embedding": {"kind": "embedding", "minCosineSimilarity": 0.99, "maxRelativeError": 0.1}
    }


def test_a_declared_embedding_refusal_names_cosine_first(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    """All-zero calibration breaks INT8 (as in the pipeline tests); declared an embedding, the
    output is refused for its cosine, not for top-1."""
    with np.load(conv.calibration) as good:
        zeros = save_npz(tmp_path / "zeros.npz", {"input": np.zeros_like(good["input"])})
    args = ("--model", conv.model, "--precision", "int8", "--calibration", zeros)
    code, result = run_build(
        *args, "--validation", conv.validation, "--output-kind", "logits=embedding"
    )
    assert (code, result["reason"]) == (14, "AccuracyGateFailed"), result
    assert result["message"].startswith(
        "accuracy gate failed against FP32: logits (embedding): cosine similarity"
    )
    assert "top-1" not in result["message"]


def test_an_output_kind_for_an_unknown_output_is_refused(
    run_build: RunBuild, embedder: tuple[Path, Path]
) -> None:
    model, data = embedder
    code, result = run_build(
        "--model",
        model,
        "--precision",
        "fp32",
        "--validation",
        data,
        "--output-kind",
        "y=embedding",
    )
    assert (code, result["reason"]) == (12, "InvalidArgument")
    assert "'embedding'" in result["message"]


def test_peak_memory_is_of_the_order_of_the_model(run_build: RunBuild, tmp_path: Path) -> None:
    """200 small 160x160 weights: 19.5 MiB. Each is below malloc's mmap threshold, which is what
    hid the memory when it was measured inside the build process (0.65 MiB reported for 39 MiB)."""
    rng = np.random.default_rng(5)
    layers = [rng.standard_normal((160, 160)) / 12.65 for _ in range(200)]
    model = _model(tmp_path / "stack.onnx", layers, "embedding")
    weights_mib = 200 * 160 * 160 * 4 / 2**20
    data = save_npz(tmp_path / "x.npz", {"x": rng.standard_normal((8, 160)).astype(np.float32)})
    code, result = run_build("--model", model, "--precision", "fp32", "--validation", data)
    assert code == 0, result
    peak = result["benchmark"]["peakMemoryMiB"]
    assert 0.8 * weights_mib <= peak <= 4 * weights_mib, (peak, weights_mib)


# --- two stages: the converted model, then the artifact through the serving executor ----------


def test_both_stages_are_reported(run_build: RunBuild, conv: SampleModel) -> None:
    code, result = run_build(
        "--model", conv.model, "--precision", "fp16", "--validation", conv.validation
    )
    assert code == 0, result
    assert result["accuracy"]["stages"] == {"converted": True, "artifact": True}
    accuracy = json.loads((Path(result["path"]) / "metadata.json").read_text())["accuracy"]
    stages = accuracy["stages"]
    assert stages["converted"]["checked"] == "converted.onnx on ONNX Runtime (CPU)"
    assert stages["artifact"]["checked"].startswith("model.ort.onnx on ONNX Runtime ")
    assert accuracy["checked"] == stages["artifact"]["checked"]  # what serves is what is judged
    assert accuracy["outputs"] == stages["artifact"]["outputs"]
    assert set(stages["converted"]["outputs"]) == {"logits"}


class LossyEngine(OnnxRuntimeBackend):
    """An engine stage whose numerics differ from the converted model's, as TensorRT's FP16
    accumulation or a bad tactic could. It runs on ONNX Runtime (a perturbed copy of its
    artifact's weights): no TensorRT result is faked, the gate's stage logic is what is tested."""

    def build(self, converted: Path, folder: Path, settings: EngineSettings) -> Path:
        artifact = super().build(converted, folder, settings)
        model = onnx.load(str(artifact))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.size > 16:
                noisy = w + rng.standard_normal(w.shape).astype(np.float32) * 3 * w.std()
                init.CopyFrom(numpy_helper.from_array(noisy, init.name))
        onnx.save(model, str(artifact))
        return artifact


def test_an_engine_that_loses_accuracy_is_blamed_not_the_conversion(
    conv: SampleModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "load_backend", lambda name: LossyEngine())
    request = pipeline.BuildRequest(
        model=conv.model,
        precision="fp32",
        backend="onnxruntime",
        storage=tmp_path / "store",
        validation=conv.validation,
        benchmark_iterations=2,
    )
    with pytest.raises(AccuracyError) as info:
        pipeline.build(request)
    message = info.value.message
    assert message.startswith("accuracy gate failed against FP32: logits (class-scores): top-1")
    assert "(model.ort.onnx on ONNX Runtime" in message
    assert (
        "converted.onnx on ONNX Runtime (CPU) passes, so the loss comes from the engine" in message
    )
    assert not [p for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")]


def test_a_conversion_that_loses_accuracy_is_named(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    with np.load(conv.calibration) as good:
        zeros = save_npz(tmp_path / "zeros.npz", {"input": np.zeros_like(good["input"])})
    args = ("--model", conv.model, "--precision", "int8", "--calibration", zeros)
    code, result = run_build(*args, "--validation", conv.validation)
    assert (code, result["reason"]) == (14, "AccuracyGateFailed"), result
    assert "The precision conversion already loses it: converted.onnx" in result["message"]


# --- declared in the TrtEngine: the operator passes kinds and bounds to the build Job ---------


def test_output_kinds_in_the_spec_reach_the_worker() -> None:
    """The Job's args, as the operator writes them, parsed by the worker's own CLI."""
    import argparse

    from trtops_operator import manifests
    from trtops_operator.config import OperatorConfig
    from trtops_operator.models import TrtEngineSpec
    from trtops_worker.builder.cli import add_arguments, request_from_args

    spec = TrtEngineSpec.model_validate(
        {
            "model": {"uri": "m.onnx"},
            "build": {
                "targets": [{"gpuProduct": "H100"}],
                "accuracy": {
                    "validation": {"uri": "v.npz"},
                    "maxRelativeError": 0.05,
                    "outputKinds": {"sentence_embedding": "embedding", "scores": "class-scores"},
                },
            },
            "storage": {"claimName": "c"},
        }
    )
    engine = manifests.Engine(name="e", namespace="ns", uid="u", spec=spec)
    job = manifests.render_build_job(
        engine, "H100", "k" * 64, name="j", config=OperatorConfig(worker_image="w:1")
    )
    container = next(
        c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "build"
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    request = request_from_args(parser.parse_args(container["args"][1:]))
    assert request.output_kinds == {"scores": "class-scores", "sentence_embedding": "embedding"}
    assert request.thresholds == Thresholds(max_relative_error=0.05)


@pytest.mark.cluster
@pytest.mark.usefixtures("trtengine_crd")
def test_the_api_server_checks_output_kinds(k8s_api: object, namespace: str) -> None:
    from kubernetes import client

    def create(accuracy: dict[str, object]) -> object:
        body = {
            "apiVersion": "trtops.dev/v1alpha1",
            "kind": "TrtEngine",
            "metadata": {"name": "e"},
            "spec": {
                "model": {"uri": "m.onnx"},
                "build": {
                    "targets": [{"gpuProduct": "H100"}],
                    "accuracy": {"validation": {"uri": "v.npz"}, **accuracy},
                },
                "storage": {"claimName": "c"},
            },
        }
        return client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
            "trtops.dev", "v1alpha1", namespace, "trtengines", body, dry_run="All"
        )

    create({"outputKinds": {"sentence_embedding": "embedding"}})  # kinds alone: their defaults
    with pytest.raises(client.ApiException) as refused:
        create({"outputKinds": {"sentence_embedding": "logits"}})
    message = json.loads(refused.value.body)["message"]
    assert "spec.build.accuracy.outputKinds.sentence_embedding" in message, message
    assert "class-scores" in message
