"""One build, start to finish: check inputs -> key -> cache hit, or convert -> engine -> accuracy
gate -> benchmark -> publish.

Cheap checks come first (model digest and format, profiles, calibration names and shapes, the
backend's runtime, storage), so a bad request fails in about a second, before any conversion.
Nothing reaches ``<storage>/<key>/`` unless it passed the gate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtops_worker import __version__
from trtops_worker.builder import precision as precision_stage
from trtops_worker.builder.accuracy import (
    OutputKind,
    OutputMetrics,
    Thresholds,
    evaluate,
    output_kinds,
    output_metrics,
)
from trtops_worker.builder.benchmark import feeds_for
from trtops_worker.builder.data import InputSet, batches, load_input_set
from trtops_worker.builder.engine import ArtifactRunner, Backend, EngineSettings, load_backend
from trtops_worker.builder.errors import AccuracyError, CalibrationError, ConfigError, EngineError
from trtops_worker.builder.model import LoadedModel, load_model, sha256_file
from trtops_worker.builder.profiles import check_profiles
from trtops_worker.builder.regression import compare_plans
from trtops_worker.builder.sample import choose_input_set
from trtops_worker.builder.store import METADATA, Store
from trtops_worker.cachekey import (
    CalibrationIngredients,
    KeyIngredients,
    ProfileIngredients,
    cache_key,
)

__all__ = ["BuildRequest", "build"]

log = logging.getLogger(__name__)
CONVERTED = "converted.onnx"
TIMING_CACHE = "timing.cache"  # written by backends that have one (TensorRT)


@dataclass(frozen=True)
class BuildRequest:
    model: Path
    precision: str
    backend: str
    storage: Path
    model_sha256: str | None = None
    calibration: Path | None = None
    calibration_method: str = "entropy"
    calibration_max_samples: int = 512
    # The request sample's folder (source: sample): used once it holds this many rows.
    calibration_sample: Path | None = None
    calibration_min_sample_rows: int = 64
    profiles: tuple[ProfileIngredients, ...] = ()
    optimization_level: int = 3
    workspace_mib: int = 2048
    validation: Path | None = None
    validation_max_samples: int = 256
    validation_sample: Path | None = None
    validation_min_sample_rows: int = 64
    thresholds: Thresholds = field(default_factory=Thresholds)
    output_kinds: dict[str, OutputKind] = field(default_factory=dict)  # declared; others detected
    benchmark_batch_sizes: tuple[int, ...] = (1, 8)
    benchmark_iterations: int = 50
    benchmark_seconds: float = 2.0
    gpu_product: str | None = None
    # A scheduled rebuild: the serving plan's folder, measured against the new plan here.
    baseline: Path | None = None


def build(request: BuildRequest) -> dict[str, Any]:
    """Build (or find) the artifact: the operator's result, or a ``BuildError``."""
    started = time.perf_counter()
    model = load_model(request.model, request.model_sha256)
    check_profiles(request.profiles, model.inputs)
    quantized = request.precision in precision_stage.QUANTIZED
    calibration: InputSet | None = None
    sources: dict[str, str] = {}  # where calibration and validation data came from
    if quantized and request.calibration is None and request.calibration_sample is None:
        raise CalibrationError(
            "CalibrationRequired",
            f"{request.precision} needs calibration data (--calibration .npz/.npy)",
        )
    if quantized:
        calibration, sources["calibration"] = choose_input_set(
            request.calibration,
            request.calibration_sample,
            request.calibration_min_sample_rows,
            model.inputs,
            request.calibration_max_samples,
            kind="calibration",
        )
        precision_stage.check_calibration_method(request.precision, request.calibration_method)
    validation = _validation_set(request, model, calibration, sources)
    kinds = _output_kinds(model, request.output_kinds)
    backend = load_backend(request.backend)
    store = Store(request.storage)
    store.ensure_writable()
    store.clean_stale()  # a killed build's leftovers go at the next build here, cached or not

    ingredients = KeyIngredients(
        model_sha256=model.sha256,
        precision=request.precision,
        backend=backend.name,
        backend_version=backend.version(),
        device=backend.device(request.gpu_product),
        # Calibration shapes only quantized precisions: elsewhere it must not split the cache.
        calibration=CalibrationIngredients(
            calibration.sha256, request.calibration_method, request.calibration_max_samples
        )
        if calibration
        else None,
        profiles=request.profiles,
        optimization_level=request.optimization_level,
        workspace_mib=request.workspace_mib,
    )
    key = cache_key(ingredients)
    cached = store.lookup(key)
    if cached is not None:
        _regate(cached, request.thresholds, kinds)
        log.info("cache hit %s", key)
        result = _result(cached, store.entry(key), cached=True) | _sources(sources)
        return result | _comparison(request, store.entry(key), model, backend, validation)

    shared_cache = _timing_cache_name(ingredients)
    log.info("building %s: %s on %s, key %s", model.path.name, request.precision, backend.name, key)
    temp = store.begin(key)
    try:
        metadata = _build_into(
            temp.path,
            request,
            model,
            backend,
            ingredients,
            key,
            calibration,
            validation,
            kinds,
            started,
            store.shared_file(shared_cache),
        )
        final = store.publish(temp, key)
    except BaseException:
        store.abandon(temp)
        raise
    log.info("published %s", final)
    if (final / TIMING_CACHE).is_file():
        store.replace_shared(shared_cache, final / TIMING_CACHE)
    published = store.lookup(key) or metadata  # another builder may have won the race
    result = _result(published, final, cached=False) | _sources(sources)
    return result | _comparison(request, final, model, backend, validation)


def _comparison(
    request: BuildRequest,
    folder: Path,
    model: LoadedModel,
    backend: Backend,
    validation: InputSet | None,
) -> dict[str, Any]:
    """With ``--baseline``: the new plan against the serving one (``regression.py``)."""
    if request.baseline is None:
        return {}
    comparison = compare_plans(
        folder,
        request.baseline,
        model,
        backend,
        validation,
        batch_sizes=request.benchmark_batch_sizes,
        fallback_dims={p.input: p.opt for p in request.profiles},
        gate_batch_size=_gate_batch_size(request.profiles),
        iterations=request.benchmark_iterations,
        seconds=request.benchmark_seconds,
    )
    return {"comparison": comparison}


def _sources(sources: dict[str, str]) -> dict[str, Any]:
    """Where this build's calibration and validation data came from (file or request sample)."""
    return {"dataSources": sources} if sources else {}


def _timing_cache_name(ingredients: KeyIngredients) -> str:
    """Tactic timings are valid per backend version and device, whatever the model."""
    device = ingredients.device.to_json()
    parts = [
        ingredients.backend,
        ingredients.backend_version,
        str(device.get("computeCapability") or "cpu"),
        str(device.get("gpuProduct") or ""),
    ]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in parts if p)) + ".timing.cache"


def _validation_set(
    request: BuildRequest,
    model: LoadedModel,
    calibration: InputSet | None,
    sources: dict[str, str],
) -> InputSet | None:
    """Validation data if given; else the calibration data (better than nothing, and said so)."""
    if request.validation is not None or request.validation_sample is not None:
        validation, sources["validation"] = choose_input_set(
            request.validation,
            request.validation_sample,
            request.validation_min_sample_rows,
            model.inputs,
            request.validation_max_samples,
            kind="validation",
        )
        return validation
    if request.calibration is not None:
        if calibration is not None:
            n = min(calibration.samples, request.validation_max_samples)
            arrays = {name: a[:n] for name, a in calibration.arrays.items()}
            return InputSet(arrays=arrays, sha256=calibration.sha256, samples=n)
        return load_input_set(
            request.calibration, model.inputs, request.validation_max_samples, kind="validation"
        )
    return None


def _build_into(
    folder: Path,
    request: BuildRequest,
    model: LoadedModel,
    backend: Backend,
    ingredients: KeyIngredients,
    key: str,
    calibration: InputSet | None,
    validation: InputSet | None,
    kinds: dict[str, OutputKind],
    started: float,
    timing_cache: Path,
) -> dict[str, Any]:
    converted = folder / CONVERTED
    precision_stage.convert(
        model.path,
        converted,
        request.precision,
        calibration=calibration.arrays if calibration else None,
        calibration_method=request.calibration_method,
    )
    settings = EngineSettings(
        precision=request.precision,
        inputs=model.inputs,
        profiles=request.profiles,
        optimization_level=request.optimization_level,
        workspace_mib=request.workspace_mib,
        timing_cache=timing_cache,
    )
    log.info("precision stage done (%s)", request.precision)
    artifact = backend.build(converted, folder, settings)
    log.info("engine stage done: %s", artifact.name)
    build_seconds = round(time.perf_counter() - started, 3)

    accuracy = _gate(
        model,
        converted,
        artifact,
        backend,
        validation,
        request.thresholds,
        kinds,
        used_calibration=request.validation is None and request.validation_sample is None,
        batch_size=_gate_batch_size(request.profiles),
    )
    feeds = feeds_for(
        model.inputs,
        list(request.benchmark_batch_sizes),
        validation.arrays if validation else None,
        {p.input: p.opt for p in request.profiles},
    )
    log.info("accuracy gate: %s", "passed" if accuracy.get("passed") else "not checked")
    benchmark = backend.benchmark(
        artifact, feeds, request.benchmark_iterations, request.benchmark_seconds
    )

    converted_model = onnx.load(str(converted), load_external_data=False)
    metadata: dict[str, Any] = {
        "key": key,
        "backend": backend.name,
        "precision": request.precision,
        "artifact": artifact.name,
        "artifact_sha256": sha256_file(artifact),
        "artifact_bytes": artifact.stat().st_size,
        "converted_onnx": CONVERTED,
        "converted_onnx_sha256": sha256_file(converted),
        "inputs": [s.to_json() for s in model.inputs],
        "outputs": [s.to_json() for s in model.outputs],
        "opset": max(
            (o.version for o in converted_model.opset_import if o.domain in ("", "ai.onnx")),
            default=0,
        ),
        "ingredients": ingredients.to_json(),
        "versions": _versions(backend),
        "device": ingredients.device.to_json(),
        "build_seconds": build_seconds,
        "built_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "accuracy": accuracy,
        "benchmark": benchmark,
    }
    (folder / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


def _versions(backend: Backend) -> dict[str, str]:
    versions = {
        "trtops": __version__,
        "python": platform.python_version(),
        "onnx": str(onnx.__version__),
        backend.name: backend.version(),
    }
    modelopt = precision_stage.modelopt_version()
    if modelopt is not None:
        versions["modelopt"] = modelopt
    return versions


def _gate_batch_size(profiles: tuple[ProfileIngredients, ...]) -> int:
    """32 samples per run, fewer where an optimization profile allows fewer (a TensorRT plan
    refuses shapes outside its profile)."""
    return min([32, *(p.max[0] for p in profiles if p.max)])


def _gate(
    model: LoadedModel,
    converted: Path,
    artifact: Path,
    backend: Backend,
    validation: InputSet | None,
    thresholds: Thresholds,
    kinds: dict[str, OutputKind],
    *,
    used_calibration: bool,
    batch_size: int,
) -> dict[str, Any]:
    """Compare with FP32 (ONNX Runtime on the input model) in two stages, same thresholds:

    - ``converted``: ``converted.onnx`` on ONNX Runtime (CPU): what the precision conversion
      did (and what the CPU fallback serves);
    - ``artifact``: the built artifact through ``backend.runner``, the executor serving uses
      (for TensorRT: the plan on the build GPU).

    Either stage missing a threshold raises ``AccuracyError``; the message leads with the
    artifact's misses and says which stage lost the accuracy. The report's top-level
    ``outputs``/``passed``/``checked`` are the artifact stage's (what serves)."""
    from trtops_worker.builder.engine_onnxruntime import Runner

    stage_names = {
        "converted": f"{converted.name} on ONNX Runtime (CPU)",
        "artifact": f"{artifact.name} on {backend.runs_on()}",
    }
    report: dict[str, Any] = {
        "thresholds": thresholds.applied_json(kinds),
        "checked": stage_names["artifact"],
    }
    if validation is None:
        report |= {
            "passed": None,
            "note": "no validation or calibration data: accuracy not checked",
        }
        return report
    feeds = list(batches(validation.arrays, model.inputs, preferred=batch_size))
    reference = _run_all(Runner(model.path), feeds)
    stages: dict[str, dict[str, Any]] = {}
    problems: dict[str, list[str]] = {}
    openers: dict[str, Callable[[], ArtifactRunner]] = {
        "converted": lambda: Runner(converted),
        "artifact": lambda: backend.runner(artifact),
    }
    for stage, open_runner in openers.items():
        try:
            outputs = _run_all(open_runner(), feeds)
        except EngineError as exc:
            if stage == "artifact" or backend.name == "onnxruntime":
                raise
            # bf16 has no ONNX Runtime CPU kernels: the plan is still checked, this stage not.
            stages[stage] = {"checked": stage_names[stage], "passed": None, "note": exc.message}
            continue
        metrics = {name: output_metrics(reference[name], outputs[name]) for name in reference}
        problems[stage] = evaluate(metrics, thresholds, kinds)
        stages[stage] = {
            "checked": stage_names[stage],
            "outputs": {name: m.to_json() for name, m in sorted(metrics.items())},
            "passed": not problems[stage],
        }
    report |= {
        "samples": len(next(iter(reference.values()))),
        "data": "calibration set (no --validation given)" if used_calibration else "validation set",
        "outputs": stages["artifact"]["outputs"],
        "passed": not any(problems.values()),
        "stages": stages,
    }
    if any(problems.values()):
        raise AccuracyError("AccuracyGateFailed", _refusal(problems, stage_names))
    return report


def _run_all(runner: ArtifactRunner, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output over every feed, concatenated along the sample axis."""
    collected: dict[str, list[np.ndarray]] = {}
    try:
        for feed in feeds:
            for name, value in runner.run(feed).items():
                collected.setdefault(name, []).append(value)
    finally:
        runner.close()
    return {name: np.concatenate(values) for name, values in collected.items()}


def _refusal(problems: dict[str, list[str]], stage_names: dict[str, str]) -> str:
    """Which thresholds were missed, and which stage lost the accuracy."""
    artifact, converted = problems.get("artifact", []), problems.get("converted")
    head = "accuracy gate failed against FP32: "
    if artifact and converted:
        return (
            f"{head}{'; '.join(artifact)} ({stage_names['artifact']}). The precision conversion "
            f"already loses it: {stage_names['converted']} misses too ({converted[0]})"
        )
    if artifact:
        why = (
            "passes, so the loss comes from the engine, not the precision conversion"
            if converted is not None
            else "was not checked"
        )
        where = stage_names["artifact"]
        return f"{head}{'; '.join(artifact)} ({where}). {stage_names['converted']} {why}"
    return (
        f"{head}{'; '.join(converted or [])} ({stage_names['converted']}, what the CPU fallback "
        f"serves). {stage_names['artifact']} passes"
    )


def _output_kinds(model: LoadedModel, declared: dict[str, OutputKind]) -> dict[str, OutputKind]:
    unknown = sorted(set(declared) - {s.name for s in model.outputs})
    if unknown:
        names = [s.name for s in model.outputs]
        raise ConfigError("InvalidArgument", f"--output-kind names {unknown}; outputs are {names}")
    return output_kinds(model.proto.graph, declared)


def _regate(metadata: dict[str, Any], thresholds: Thresholds, kinds: dict[str, OutputKind]) -> None:
    """A cached artifact passed the gate it was built with; it must also pass today's thresholds."""
    accuracy = metadata.get("accuracy") or {}
    problems: list[str] = []
    stages = accuracy.get("stages") or {"artifact": accuracy}
    for stage in stages.values():
        outputs = stage.get("outputs") or {}
        metrics = {name: OutputMetrics.from_json(m) for name, m in outputs.items()}
        problems += evaluate(metrics, thresholds, kinds)
    if problems:
        raise AccuracyError(
            "AccuracyGateFailed",
            "cached artifact misses the requested thresholds: " + "; ".join(problems),
        )


def _result(metadata: dict[str, Any], folder: Path, *, cached: bool) -> dict[str, Any]:
    bench = metadata.get("benchmark") or {}
    accuracy = metadata.get("accuracy") or {}
    return {
        "ok": True,
        "key": metadata["key"],
        "path": str(folder),
        "artifact": metadata["artifact"],
        "sha256": metadata["artifact_sha256"],
        "precision": metadata["precision"],
        "backend": metadata["backend"],
        "versions": metadata.get("versions", {}),
        "device": metadata.get("device", {}),
        "cached": cached,
        "buildSeconds": metadata.get("build_seconds"),
        "accuracy": {
            "passed": accuracy.get("passed"),
            "samples": accuracy.get("samples"),
            "outputs": accuracy.get("outputs", {}),
            "stages": {k: v.get("passed") for k, v in (accuracy.get("stages") or {}).items()},
        },
        "benchmark": {
            "batches": [
                {
                    "batchSize": b["batchSize"],
                    "p50Ms": b["latencyMs"]["p50"],
                    "p99Ms": b["latencyMs"]["p99"],
                    "throughputPerSecond": b["throughputPerSecond"],
                }
                for b in bench.get("batches", [])
            ],
            "peakMemoryMiB": bench.get("peakMemoryMiB"),
        },
    }
