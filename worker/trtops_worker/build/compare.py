"""Build one model at several precisions and put the results side by side.

For people choosing a precision: each row is a real build through the same pipeline as
``build`` (so it lands in, or comes from, the same content-addressed store), measured with the
same self-benchmark, with accuracy against the FP32 model. The gate's thresholds are off here:
a precision that would fail a gate is exactly what the table must show, not hide.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from trtops_worker.build.accuracy import Thresholds
from trtops_worker.build.errors import BuildError
from trtops_worker.build.pipeline import BuildRequest, build

__all__ = ["compare", "render_chart", "render_markdown"]

COLUMNS = (
    "precision",
    "p50 ms",
    "p99 ms",
    "throughput /s",
    "artifact KiB",
    "top-1 vs FP32",
    "cosine vs FP32",
    "mean abs err",
)


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
    (out / "compare.md").write_text(render_markdown(rows, batch=base.benchmark_batch_sizes[0]))
    render_chart(rows, out / "compare.png")
    return rows


def _row(result: dict[str, Any]) -> dict[str, Any]:
    folder = Path(result["path"])
    metadata = json.loads((folder / "metadata.json").read_text())
    first = (metadata["benchmark"].get("batches") or [{}])[0]
    outputs = metadata["accuracy"].get("outputs") or {}
    name = sorted(outputs)[0] if outputs else None
    acc = outputs.get(name, {}) if name else {}
    return {
        "precision": result["precision"],
        "backend": result["backend"],
        "key": result["key"],
        "cached": result["cached"],
        "batchSize": first.get("batchSize"),
        "p50Ms": first.get("latencyMs", {}).get("p50"),
        "p99Ms": first.get("latencyMs", {}).get("p99"),
        "throughputPerSecond": first.get("throughputPerSecond"),
        "artifactBytes": metadata.get("artifact_bytes"),
        "output": name,
        "top1Agreement": acc.get("top1Agreement"),
        "cosineSimilarity": acc.get("cosineSimilarity"),
        "meanAbsError": acc.get("meanAbsError"),
        "accuracySamples": metadata["accuracy"].get("samples"),
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_markdown(rows: list[dict[str, Any]], batch: int) -> str:
    lines = [
        f"Latency and throughput at batch {batch}; accuracy on the first output against FP32.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['precision']} | failed: {r['error'][:120]} |" + " |" * (len(COLUMNS) - 2)
            )
            continue
        size = None if r["artifactBytes"] is None else round(r["artifactBytes"] / 1024, 1)
        cells = [
            r["precision"],
            _fmt(r["p50Ms"]),
            _fmt(r["p99Ms"]),
            _fmt(r["throughputPerSecond"], 6),
            _fmt(size, 6),
            _fmt(r["top1Agreement"]),
            _fmt(r["cosineSimilarity"], 6),
            _fmt(r["meanAbsError"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """p50 latency against cosine similarity to FP32, one labelled point per precision."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Job or a CI run
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, r in enumerate(rows):
        if "error" in r or r["p50Ms"] is None or r["cosineSimilarity"] is None:
            continue
        ax.scatter(r["p50Ms"], r["cosineSimilarity"], s=60)
        ax.annotate(  # staggered so that precisions at the same spot stay readable
            r["precision"],
            (r["p50Ms"], r["cosineSimilarity"]),
            textcoords="offset points",
            xytext=(6, 4 - 12 * (i % 3)),
        )
    ax.set_xlabel("p50 latency (ms, batch %s)" % (rows[0].get("batchSize") if rows else "?"))
    ax.set_ylabel("cosine similarity to FP32")
    ax.set_title("latency vs accuracy")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
