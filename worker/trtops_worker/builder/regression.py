"""A scheduled rebuild's measurements: the new plan and the serving plan, in one process, on the
same device and the same inputs (docs/experiments.md, "Scheduled rebuilds").

Both plans run through ``backend.runner``, the executor serving uses:

- **accuracy**: per output, top-1 agreement and cosine similarity with FP32 (ONNX Runtime on the
  input model) over the validation set, in the same batches (``accuracy.output_metrics``);
- **latency**: p50 per batch size, on the same feeds (``benchmark.feeds_for``), in two rounds
  that alternate serving plan and new plan; each plan keeps the lower p50 of its rounds
  (interference from elsewhere only ever adds latency).

The verdict is the operator's (``trtops_operator.regression``): this module only measures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from trtops_worker.builder.accuracy import output_metrics
from trtops_worker.builder.benchmark import feeds_for, time_runs
from trtops_worker.builder.data import InputSet, batches
from trtops_worker.builder.engine import ArtifactRunner, Backend
from trtops_worker.builder.model import LoadedModel
from trtops_worker.builder.store import METADATA

__all__ = ["ROUNDS", "compare_plans"]

log = logging.getLogger(__name__)
ROUNDS = 2


def _artifact(folder: Path) -> tuple[Path, dict[str, Any]]:
    metadata = json.loads((folder / METADATA).read_text())
    return folder / str(metadata["artifact"]), metadata


def _outputs(runner: ArtifactRunner, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    collected: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        for name, value in runner.run(feed).items():
            collected.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in collected.items()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _p50(runner: ArtifactRunner, feed: dict[str, np.ndarray], iterations: int, s: float) -> float:
    return float(np.percentile(time_runs(lambda: runner.run(feed), iterations, s), 50))


def compare_plans(
    candidate: Path,
    serving: Path,
    model: LoadedModel,
    backend: Backend,
    validation: InputSet | None,
    *,
    batch_sizes: tuple[int, ...],
    fallback_dims: dict[str, tuple[int, ...]],
    gate_batch_size: int,
    iterations: int,
    seconds: float,
) -> dict[str, Any]:
    """The comparison the operator's regression gate reads::

        {"serving": {"path", "artifactKey"}, "samples": N,
         "batches": [{"batchSize", "candidateP50Ms", "servingP50Ms"}],
         "outputs": {name: {"candidate": {"top1Agreement", "cosineSimilarity"},
                            "serving": {...}}}}

    or ``{"serving": {"path"}, "error": "..."}`` when the serving plan cannot be run here (gone
    from the claim, built for another backend, or refused by this runtime: a plan of an older
    TensorRT)."""
    head: dict[str, Any] = {"path": str(serving)}
    try:
        serving_artifact, serving_meta = _artifact(serving)
        head["artifactKey"] = serving_meta.get("key")
        if serving_meta.get("backend") != backend.name:
            raise ValueError(f"the serving plan is a {serving_meta.get('backend')} artifact")
        candidate_artifact, _ = _artifact(candidate)
        runners = {"serving": backend.runner(serving_artifact)}
    except Exception as e:  # any reason the serving plan cannot run here is reported, not raised
        log.warning("cannot run the serving plan %s here: %s", serving, e)
        return {"serving": head, "error": f"{type(e).__name__}: {e}"[:300]}
    runners["candidate"] = backend.runner(candidate_artifact)
    try:
        out: dict[str, Any] = {"serving": head, "batches": [], "outputs": {}}
        if validation is not None:
            feeds = list(batches(validation.arrays, model.inputs, preferred=gate_batch_size))
            from trtops_worker.builder.engine_onnxruntime import Runner

            fp32 = Runner(model.path)
            try:
                reference = _outputs(fp32, feeds)
            finally:
                fp32.close()
            results = {side: _outputs(r, feeds) for side, r in runners.items()}
            out["samples"] = validation.samples
            for name in sorted(reference):
                out["outputs"][name] = {
                    side: {
                        "top1Agreement": _round(m.top1_agreement),
                        "cosineSimilarity": _round(m.cosine_similarity),
                    }
                    for side in ("candidate", "serving")
                    for m in [output_metrics(reference[name], results[side][name])]
                }
        samples = validation.arrays if validation is not None else None
        timing = feeds_for(model.inputs, list(batch_sizes), samples, fallback_dims)
        for size, feed in timing.items():
            best = {side: float("inf") for side in runners}
            for _ in range(ROUNDS):
                for side in ("serving", "candidate"):
                    best[side] = min(best[side], _p50(runners[side], feed, iterations, seconds))
            out["batches"].append(
                {
                    "batchSize": size,
                    "candidateP50Ms": round(best["candidate"], 4),
                    "servingP50Ms": round(best["serving"], 4),
                }
            )
        return out
    finally:
        for runner in runners.values():
            runner.close()
