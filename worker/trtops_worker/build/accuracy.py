"""The accuracy gate: how far a built artifact's outputs are from the FP32 model's.

Metrics (per output, over the whole validation set) are pure numpy so they are table-tested
without a model; :func:`evaluate` applies the thresholds and says which were missed.

- top-1 agreement: share of samples whose argmax over the last axis is the same (only for
  outputs shaped ``[N, ..., C]`` with C > 1, where argmax means a class),
- mean / max absolute error,
- cosine similarity: mean over samples of the cosine between the flattened outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OutputMetrics", "Thresholds", "evaluate", "output_metrics"]


@dataclass(frozen=True)
class OutputMetrics:
    top1_agreement: float | None
    mean_abs_error: float
    max_abs_error: float
    cosine_similarity: float

    def to_json(self) -> dict[str, Any]:
        return {
            "top1Agreement": _round(self.top1_agreement),
            "meanAbsError": _round(self.mean_abs_error),
            "maxAbsError": _round(self.max_abs_error),
            "cosineSimilarity": _round(self.cosine_similarity),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


@dataclass(frozen=True)
class Thresholds:
    """``None`` = not checked."""

    min_top1_agreement: float | None = 0.95
    max_mean_abs_error: float | None = None
    min_cosine_similarity: float | None = 0.99

    def to_json(self) -> dict[str, Any]:
        return {
            "minTop1Agreement": self.min_top1_agreement,
            "maxMeanAbsError": self.max_mean_abs_error,
            "minCosineSimilarity": self.min_cosine_similarity,
        }


def output_metrics(reference: np.ndarray, candidate: np.ndarray) -> OutputMetrics:
    """Compare one output of the FP32 model (``reference``) with the artifact's, sample axis 0."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    if not np.all(np.isfinite(cand)):
        # NaN/Inf from an overflowing FP16 graph must fail every check, not poison the averages.
        return OutputMetrics(0.0 if _has_classes(ref) else None, float("inf"), float("inf"), -1.0)
    diff = np.abs(ref - cand)
    n = ref.shape[0] if ref.ndim else 1
    flat_ref, flat_cand = ref.reshape(n, -1), cand.reshape(n, -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_cand, axis=1)
    dots = np.sum(flat_ref * flat_cand, axis=1)
    both_zero = (np.linalg.norm(flat_ref, axis=1) == 0) & (np.linalg.norm(flat_cand, axis=1) == 0)
    cosine = np.where(
        both_zero, 1.0, np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    )
    top1 = None
    if _has_classes(ref):
        top1 = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
    return OutputMetrics(
        top1_agreement=top1,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        cosine_similarity=float(cosine.mean()) if cosine.size else 1.0,
    )


def _has_classes(a: np.ndarray) -> bool:
    return a.ndim >= 2 and a.shape[-1] > 1


def evaluate(metrics: dict[str, OutputMetrics], thresholds: Thresholds) -> list[str]:
    """Human-readable violations, empty when the gate passes."""
    problems: list[str] = []
    for name, m in sorted(metrics.items()):
        t = thresholds
        if (
            t.min_top1_agreement is not None
            and m.top1_agreement is not None
            and m.top1_agreement < t.min_top1_agreement
        ):
            problems.append(
                f"{name}: top-1 agreement {m.top1_agreement:.4f} < {t.min_top1_agreement}"
            )
        if t.max_mean_abs_error is not None and not m.mean_abs_error <= t.max_mean_abs_error:
            problems.append(
                f"{name}: mean abs error {m.mean_abs_error:.4g} > {t.max_mean_abs_error}"
            )
        if t.min_cosine_similarity is not None and m.cosine_similarity < t.min_cosine_similarity:
            problems.append(
                f"{name}: cosine similarity {m.cosine_similarity:.4f} < {t.min_cosine_similarity}"
            )
    return problems
