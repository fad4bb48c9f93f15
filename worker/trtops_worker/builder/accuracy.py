"""The accuracy gate: how far a built artifact's outputs are from the FP32 model's.

Metrics (per output, over the whole validation set) are pure numpy so they are table-tested
without a model; :func:`evaluate` applies the thresholds and says which were missed.

- top-1 agreement: share of samples whose argmax over the last axis is the same (computed for
  outputs shaped ``[N, ..., C]`` with C > 1),
- mean / max absolute error, and the relative error: mean absolute error over the FP32 output's
  mean absolute value (scale-free, so one default fits any regression or embedding),
- cosine similarity: mean over samples of the cosine between the flattened outputs.

Which thresholds apply depends on what an output *is* (:data:`OutputKind`): top-1 agreement
means something only for class scores (the largest of 384 embedding dimensions is no class).
Every threshold the user sets applies to every output where its metric exists; where the user
set none, each output gets its kind's documented default (:data:`DEFAULTS`, docs/build.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = [
    "DEFAULTS",
    "OUTPUT_KINDS",
    "OutputKind",
    "OutputMetrics",
    "Thresholds",
    "evaluate",
    "output_kinds",
    "output_metrics",
]

OutputKind = Literal["class-scores", "embedding", "regression"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("class-scores", "embedding", "regression")

# Threshold field -> (metric attribute, bound direction, words in a message)
_CHECKS = {
    "min_top1_agreement": ("top1_agreement", "min", "top-1 agreement"),
    "min_cosine_similarity": ("cosine_similarity", "min", "cosine similarity"),
    "max_relative_error": ("relative_error", "max", "relative error"),
    "max_mean_abs_error": ("mean_abs_error", "max", "mean abs error"),
}
# Defaults per kind, the one that matters most for the kind first (a refusal leads with it).
# Class scores: the answer is the argmax. Embeddings: direction (cosine), then size. Regressions
# (one value per sample, where a cosine is just the sign): size.
DEFAULTS: dict[OutputKind, dict[str, float]] = {
    "class-scores": {"min_top1_agreement": 0.95, "min_cosine_similarity": 0.99},
    "embedding": {"min_cosine_similarity": 0.99, "max_relative_error": 0.1},
    "regression": {"max_relative_error": 0.1},
}
_CLASS_PRODUCERS = {"Softmax", "LogSoftmax", "Sigmoid"}
_CLASS_NAME = re.compile(r"logit|prob|softmax|class", re.IGNORECASE)


@dataclass(frozen=True)
class OutputMetrics:
    top1_agreement: float | None
    mean_abs_error: float
    max_abs_error: float
    cosine_similarity: float
    relative_error: float = 0.0  # mean abs error / mean |FP32 output|

    def to_json(self) -> dict[str, Any]:
        return {
            "top1Agreement": _round(self.top1_agreement),
            "meanAbsError": _round(self.mean_abs_error),
            "maxAbsError": _round(self.max_abs_error),
            "cosineSimilarity": _round(self.cosine_similarity),
            "relativeError": _round(self.relative_error),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputMetrics:
        return cls(
            data.get("top1Agreement"),
            float(data["meanAbsError"]),
            float(data["maxAbsError"]),
            float(data["cosineSimilarity"]),
            float(data.get("relativeError") or 0.0),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


@dataclass(frozen=True)
class Thresholds:
    """What the user set; ``None`` = not set, the output kind's default applies."""

    min_top1_agreement: float | None = None
    max_mean_abs_error: float | None = None
    min_cosine_similarity: float | None = None
    max_relative_error: float | None = None
    use_defaults: bool = True  # False: only what is set is checked (``compare`` checks nothing)

    def to_json(self) -> dict[str, Any]:
        return {
            "minTop1Agreement": self.min_top1_agreement,
            "maxMeanAbsError": self.max_mean_abs_error,
            "minCosineSimilarity": self.min_cosine_similarity,
            "maxRelativeError": self.max_relative_error,
        }

    def applied(self, kind: OutputKind) -> dict[str, tuple[float, str]]:
        """Threshold field -> (bound, ``"set"`` or ``"default for <kind>"``), most telling first:
        the ones the user set, then the kind's defaults for the rest, in their order."""
        chosen = {f: (v, "set") for f in _CHECKS if (v := getattr(self, f)) is not None}
        for f, v in DEFAULTS[kind].items() if self.use_defaults else ():
            chosen.setdefault(f, (v, f"default for {kind}"))
        return chosen

    def applied_json(self, kinds: dict[str, OutputKind]) -> dict[str, Any]:
        """Per output: its kind and every bound applied to it (the report's ``thresholds``)."""
        return {
            name: {"kind": kind} | {_camel(f): v for f, (v, _) in self.applied(kind).items()}
            for name, kind in sorted(kinds.items())
        }


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(w.capitalize() for w in rest)


def output_kinds(
    graph: onnx.GraphProto, declared: dict[str, OutputKind] | None = None
) -> dict[str, OutputKind]:
    """Each graph output's kind: as declared; else ``regression`` for one value per sample;
    ``class-scores`` when a Softmax/LogSoftmax/Sigmoid produces it or its name says so
    (``logits``, ``probs``, ``class...``); else ``embedding``."""
    declared = declared or {}
    producers = {out: node.op_type for node in graph.node for out in node.output}
    kinds: dict[str, OutputKind] = {}
    for value in graph.output:
        name = value.name
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
        ]
        if name in declared:
            kinds[name] = declared[name]
        elif len(dims) <= 1 or all(d == 1 for d in dims[1:]):
            kinds[name] = "regression"
        elif producers.get(name) in _CLASS_PRODUCERS or _CLASS_NAME.search(name):
            kinds[name] = "class-scores"
        else:
            kinds[name] = "embedding"
    return kinds


def output_metrics(reference: np.ndarray, candidate: np.ndarray) -> OutputMetrics:
    """Compare one output of the FP32 model (``reference``) with the artifact's, sample axis 0."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    if not np.all(np.isfinite(cand)):
        # NaN/Inf from an overflowing FP16 graph must fail every check, not poison the averages.
        top1 = 0.0 if _has_classes(ref) else None
        return OutputMetrics(top1, float("inf"), float("inf"), -1.0, float("inf"))
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
    mean_abs = float(diff.mean()) if diff.size else 0.0
    scale = float(np.abs(ref).mean()) if ref.size else 0.0
    return OutputMetrics(
        top1_agreement=top1,
        mean_abs_error=mean_abs,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        cosine_similarity=float(cosine.mean()) if cosine.size else 1.0,
        relative_error=mean_abs / scale if scale > 0 else (0.0 if mean_abs == 0 else np.inf),
    )


def _has_classes(a: np.ndarray) -> bool:
    return a.ndim >= 2 and a.shape[-1] > 1


def evaluate(
    metrics: dict[str, OutputMetrics],
    thresholds: Thresholds,
    kinds: dict[str, OutputKind] | None = None,
) -> list[str]:
    """Human-readable violations, empty when the gate passes. The most telling come first: a
    threshold the user set, then each kind's first default (top-1 for class scores, cosine for
    embeddings). An output of unknown kind is taken as an embedding."""
    kinds = kinds or {}
    ranked: list[tuple[int, str]] = []
    for name, m in sorted(metrics.items()):
        kind = kinds.get(name, "embedding")
        for rank, (field, (bound, source)) in enumerate(thresholds.applied(kind).items()):
            metric, direction, words = _CHECKS[field]
            value = getattr(m, metric)
            if value is None:
                continue  # no top-1 where a sample has one value
            if not (value >= bound if direction == "min" else value <= bound):
                sign = "<" if direction == "min" else ">"
                ranked.append(
                    (rank, f"{name} ({kind}): {words} {value:.4g} {sign} {bound} ({source})")
                )
    return [text for _, text in sorted(ranked, key=lambda r: r[0])]
