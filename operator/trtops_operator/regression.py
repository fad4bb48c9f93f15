"""The regression gate of a scheduled rebuild, pure: is the new plan not worse than the serving
one? (docs/experiments.md, "Scheduled rebuilds").

The rule, per GPU target, on the build Job's ``comparison`` (``trtops_worker.builder.regression``:
both plans measured in one process, on the same GPU and the same inputs):

- **latency**: at every batch size measured for both, the new plan's p50 is at most
  ``maxLatencyRatio`` times the serving plan's;
- **accuracy**: for every output and for each of top-1 agreement and cosine similarity with
  FP32 that both plans have, the new plan's is at most ``maxAccuracyDrop`` below the serving
  plan's.

When the serving plan could not run in the build Job (e.g. a plan of an older TensorRT), the
figures both plans recorded when they were built are compared instead (on the same GPU product
and, for accuracy, the same validation set), and the message says so. With no figure to compare
at all, the new plan is refused (``NotCompared``): the serving plan stays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trtops_operator.models import RegressionGate

__all__ = ["GateVerdict", "judge", "recorded_comparison"]

_METRICS = (("top1Agreement", "top-1 agreement"), ("cosineSimilarity", "cosine similarity"))


@dataclass(frozen=True)
class GateVerdict:
    """``reason``: ``NotWorse``, ``Slower``, ``LessAccurate`` or ``NotCompared``;
    ``message``: the figures that decided, for the condition and the Event."""

    not_worse: bool
    reason: str
    message: str


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def recorded_comparison(candidate: Mapping[str, Any], serving: Mapping[str, Any]) -> dict[str, Any]:
    """A ``comparison`` from what two plans recorded at their builds (``status.plans`` fields:
    ``benchmark.batches[].p50Ms``, ``accuracy.outputs``)."""

    def p50s(plan: Mapping[str, Any]) -> dict[int, float]:
        rows = ((plan.get("benchmark") or {}).get("batches")) or []
        return {int(r["batchSize"]): float(r["p50Ms"]) for r in rows if _num(r.get("p50Ms"))}

    def outputs(plan: Mapping[str, Any]) -> Mapping[str, Any]:
        return ((plan.get("accuracy") or {}).get("outputs")) or {}

    cand, serv = p50s(candidate), p50s(serving)
    batches = [
        {"batchSize": n, "candidateP50Ms": cand[n], "servingP50Ms": serv[n]}
        for n in sorted(cand.keys() & serv.keys())
    ]
    c_out, s_out = outputs(candidate), outputs(serving)
    compared = {
        name: {
            "candidate": {k: c_out[name].get(k) for k, _ in _METRICS},
            "serving": {k: s_out[name].get(k) for k, _ in _METRICS},
        }
        for name in sorted(c_out.keys() & s_out.keys())
    }
    return {"batches": batches, "outputs": compared, "recorded": True}


def judge(
    comparison: Mapping[str, Any] | None,
    gate: RegressionGate,
    target: str,
    recorded: Mapping[str, Any] | None = None,
) -> GateVerdict:
    """The verdict for one target. ``comparison``: the build Job's; ``recorded``: the fallback
    from :func:`recorded_comparison`, used when the Job could not run the serving plan."""
    note = ""
    if comparison is None or comparison.get("error"):
        why = (comparison or {}).get("error") or "the build reported no comparison"
        if recorded is None:
            return GateVerdict(False, "NotCompared", f"{target}: {why}")
        comparison, note = recorded, f" (figures recorded at build: {why})"
    batches: Sequence[Mapping[str, Any]] = comparison.get("batches") or []
    outputs: Mapping[str, Any] = comparison.get("outputs") or {}
    slower: list[str] = []
    ratios: list[float] = []
    for b in batches:
        cand, serv = _num(b.get("candidateP50Ms")), _num(b.get("servingP50Ms"))
        if cand is None or serv is None or serv <= 0:
            continue
        ratio = cand / serv
        ratios.append(ratio)
        if ratio > gate.max_latency_ratio:
            slower.append(
                f"p50 at batch {b.get('batchSize')} {cand:.3f} ms vs serving {serv:.3f} ms"
                f" (x{ratio:.2f} > maxLatencyRatio {gate.max_latency_ratio:g})"
            )
    worse: list[str] = []
    drops: list[float] = []
    for name, sides in sorted(outputs.items()):
        for key, words in _METRICS:
            cand = _num((sides.get("candidate") or {}).get(key))
            serv = _num((sides.get("serving") or {}).get(key))
            if cand is None or serv is None:
                continue
            drops.append(serv - cand)
            if serv - cand > gate.max_accuracy_drop:
                worse.append(
                    f"{name} {words} {cand:.4f} vs serving {serv:.4f}"
                    f" (drop {serv - cand:.4f} > maxAccuracyDrop {gate.max_accuracy_drop:g})"
                )
    if not ratios and not drops:
        return GateVerdict(False, "NotCompared", f"{target}: no figure to compare{note}")
    if worse or slower:
        reason = "LessAccurate" if worse else "Slower"
        return GateVerdict(False, reason, f"{target}: " + "; ".join(worse + slower) + note)
    parts = []
    if ratios:
        parts.append(
            f"p50 x{min(ratios):.2f}..x{max(ratios):.2f} of serving's"
            f" (maxLatencyRatio {gate.max_latency_ratio:g})"
        )
    if drops:
        parts.append(
            f"accuracy drop at most {max(max(drops), 0.0):.4f}"
            f" (maxAccuracyDrop {gate.max_accuracy_drop:g})"
        )
    return GateVerdict(True, "NotWorse", f"{target}: " + ", ".join(parts) + note)
