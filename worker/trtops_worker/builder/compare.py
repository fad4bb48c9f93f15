"""Build one model at several precisions and put the results side by side.

For people choosing a precision: each row is a real build through the same pipeline as
``build`` (so it lands in, or comes from, the same content-addressed store), measured with the
same self-benchmark, with accuracy against the FP32 model. No build is refused here: a
precision that would fail the gate is exactly what the report must show, not hide. The report
then says, per precision, whether the default gate (the thresholds ``build`` applies when none
are set, per output kind) passes it, how much faster or slower than FP32 it is at every
measured batch size, and where the figures come from (backend and device: ONNX Runtime on a
CPU says nothing about TensorRT on a GPU).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from trtops_worker.builder.accuracy import OutputKind, OutputMetrics, Thresholds, evaluate
from trtops_worker.builder.errors import BuildError
from trtops_worker.builder.pipeline import BuildRequest, build

__all__ = ["chart_figure", "compare", "render_chart", "render_markdown", "summary"]

COLUMNS = (
    "precision",
    "batch",
    "p50 ms",
    "p99 ms",
    "throughput /s",
    "p50 vs FP32",
    "artifact KiB",
    "top-1 vs FP32",
    "cosine vs FP32",
    "mean abs err",
    "default gate",
)
GATE = Thresholds()  # what ``build`` applies when the user sets nothing


def compare(base: BuildRequest, precisions: list[str], out: Path) -> list[dict[str, Any]]:
    """One row per precision (``error`` set on rows that could not be built)."""
    rows: list[dict[str, Any]] = []
    for precision in precisions:
        request = dataclasses.replace(
            base, precision=precision, thresholds=Thresholds(use_defaults=False)
        )
        try:
            result = build(request)
        except BuildError as exc:
            rows.append({"precision": precision, "error": f"{exc.reason}: {exc.message}"})
            continue
        rows.append(_row(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "compare.md").write_text(render_markdown(rows))
    render_chart(rows, out / "compare.png")
    return rows


def _row(result: dict[str, Any]) -> dict[str, Any]:
    folder = Path(result["path"])
    metadata = json.loads((folder / "metadata.json").read_text())
    bench = metadata["benchmark"]
    accuracy = metadata["accuracy"]
    outputs = accuracy.get("outputs") or {}
    name = sorted(outputs)[0] if outputs else None
    acc = outputs.get(name, {}) if name else {}
    kinds = {n: t["kind"] for n, t in (accuracy.get("thresholds") or {}).items() if "kind" in t}
    metrics = {n: OutputMetrics.from_json(m) for n, m in outputs.items()}
    misses = evaluate(metrics, GATE, kinds) if metrics else None
    return {
        "precision": result["precision"],
        "backend": result["backend"],
        "runtime": bench.get("runtime"),
        "device": _device(metadata),
        "key": result["key"],
        "cached": result["cached"],
        "batches": [
            {
                "batchSize": b["batchSize"],
                "p50Ms": b["latencyMs"]["p50"],
                "p99Ms": b["latencyMs"]["p99"],
                "throughputPerSecond": b["throughputPerSecond"],
            }
            for b in bench.get("batches") or []
        ],
        "artifactBytes": metadata.get("artifact_bytes"),
        "output": name,
        "outputKind": kinds.get(name) if name else None,
        "top1Agreement": acc.get("top1Agreement"),
        "cosineSimilarity": acc.get("cosineSimilarity"),
        "meanAbsError": acc.get("meanAbsError"),
        "accuracySamples": accuracy.get("samples"),
        "gatePassed": None if misses is None else not misses,
        "gateMisses": misses or [],
    }


def _device(metadata: dict[str, Any]) -> str:
    device = metadata.get("device") or {}
    if device.get("kind") == "gpu":
        return str(device.get("gpuProduct") or f"GPU cc {device.get('computeCapability')}")
    return "CPU"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _p50s(row: dict[str, Any]) -> dict[int, float]:
    return {b["batchSize"]: b["p50Ms"] for b in row.get("batches") or [] if b["p50Ms"]}


def _ratio(p50: float, fp32: float | None) -> str:
    """``"1.9x faster"`` / ``"2.1x slower"`` / ``"same"`` (within 5%)."""
    if not fp32:
        return "-"
    if abs(p50 - fp32) <= 0.05 * fp32:
        return "same"
    return f"{fp32 / p50:.2g}x faster" if p50 < fp32 else f"{p50 / fp32:.2g}x slower"


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per precision: speed against FP32 at each batch size, and the gate."""
    baseline = next((r for r in rows if r["precision"] == "fp32" and "error" not in r), None)
    fp32 = _p50s(baseline) if baseline else {}
    sentences = []
    for r in rows:
        p = r["precision"].upper()
        if "error" in r:
            sentences.append(f"{p} could not be built: {r['error'][:200]}")
            continue
        if r["precision"] == "fp32":
            speed = "is the baseline"
        elif fp32:
            parts = []
            for n, v in sorted(_p50s(r).items()):
                ratio = _ratio(v, fp32.get(n))
                if ratio != "-":
                    words = "as fast as" if ratio == "same" else f"{ratio} than"
                    parts.append(f"{words} FP32 at batch {n}")
            speed = f"is {', '.join(parts)} (p50)" if parts else "was not timed like FP32"
        else:
            speed = "has no FP32 row to compare with"
        if r["gatePassed"] is None:
            gate = "accuracy was not checked (no validation data)"
        elif r["gatePassed"]:
            gate = "it passes the default gate"
        else:
            gate = f"it fails the default gate: {r['gateMisses'][0]}"
        sentences.append(f"{p} {speed}; {gate}.")
    return sentences


def _gate_text(kind: OutputKind) -> str:
    bounds = GATE.applied_json({"o": kind})["o"]
    return ", ".join(f"{name} {value}" for name, value in bounds.items() if name != "kind")


def render_markdown(rows: list[dict[str, Any]]) -> str:
    built = [r for r in rows if "error" not in r]
    where = f"{built[0]['runtime']} on {built[0]['device']}" if built else "no precision was built"
    kinds: list[OutputKind] = sorted({r.get("outputKind") or "embedding" for r in built})
    gate = "; ".join(f"{kind}: {_gate_text(kind)}" for kind in kinds)
    lines = [
        f"Figures from {where}: they say nothing about another backend or device.",
        "Accuracy: the first output against the FP32 model on the validation set. "
        f"Default gate ({gate}).",
        "",
        *(f"- {s}" for s in summary(rows)),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    baseline = next((r for r in built if r["precision"] == "fp32"), None)
    fp32 = _p50s(baseline) if baseline else {}
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['precision']} | failed: {r['error'][:120]} |" + " |" * (len(COLUMNS) - 2)
            )
            continue
        size = None if r["artifactBytes"] is None else round(r["artifactBytes"] / 1024, 1)
        gate_cell = {None: "-", True: "passed", False: "failed"}[r["gatePassed"]]
        for i, b in enumerate(r["batches"] or [{"batchSize": None}]):
            p50 = b.get("p50Ms")
            first = i == 0
            cells = [
                r["precision"],
                _fmt(b.get("batchSize")),
                _fmt(p50),
                _fmt(b.get("p99Ms")),
                _fmt(b.get("throughputPerSecond"), 6),
                "baseline"
                if r["precision"] == "fp32"
                else "-"
                if p50 is None
                else _ratio(p50, fp32.get(b["batchSize"])),
                _fmt(size, 6) if first else "",
                _fmt(r["top1Agreement"]) if first else "",
                _fmt(r["cosineSimilarity"], 6) if first else "",
                _fmt(r["meanAbsError"]) if first else "",
                gate_cell if first else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """p50 latency at the largest measured batch against cosine similarity to FP32, one point
    per precision, labels kept inside the axes, the default gate's cosine bound drawn."""
    import matplotlib.pyplot as plt

    fig = chart_figure(rows)
    fig.savefig(path)
    plt.close(fig)


def chart_figure(rows: list[dict[str, Any]]) -> Any:
    """The chart as a matplotlib Figure (Agg backend), for :func:`render_chart` and tests."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Job or a CI run
    import matplotlib.pyplot as plt

    points = [
        (r["precision"], max(_p50s(r).items())[1], r["cosineSimilarity"], max(_p50s(r)))
        for r in rows
        if "error" not in r and _p50s(r) and r["cosineSimilarity"] is not None
    ]
    built = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    bound = GATE.applied("class-scores")["min_cosine_similarity"][0]
    ax.axhline(bound, color="tab:red", linestyle="--", linewidth=1)
    xs = [x for _, x, _, _ in points] or [1.0]
    ys = [y for _, _, y, _ in points] + [bound]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(max(ys), 1.0)
    x_pad = (x_hi - x_lo) * 0.25 or x_hi * 0.25 or 1.0
    y_pad = (y_hi - y_lo) * 0.25 or 0.002
    ax.set_xlim(max(0.0, x_lo - x_pad), x_hi + x_pad)
    ax.set_ylim(y_lo - y_pad, y_hi + y_pad)
    ax.text(
        0.01,
        bound,
        f" default gate: cosine >= {bound}",
        transform=ax.get_yaxis_transform(),
        va="bottom",
        color="tab:red",
        fontsize=8,
    )
    x_mid = (x_lo + x_hi) / 2
    for i, (precision, x, y, batch) in enumerate(points):
        ax.scatter(x, y, s=60)
        # Text points towards the middle, so it stays inside the axes; staggered for ties.
        ax.annotate(
            f"{precision} (batch {batch})",
            (x, y),
            textcoords="offset points",
            xytext=(8 if x <= x_mid else -8, 6 - 12 * (i % 3)),
            ha="left" if x <= x_mid else "right",
            fontsize=9,
        )
    ax.set_xlabel("p50 latency, ms (largest measured batch)")
    ax.set_ylabel("cosine similarity to FP32")
    where = f"{built[0]['runtime']} on {built[0]['device']}" if built else ""
    ax.set_title(f"latency vs accuracy: {where}", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
