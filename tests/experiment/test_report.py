"""The experiment report from a status.experiment: Markdown a person can read, a PNG that is an
image (PIL opens it; its size; not blank)."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from trtops_operator.experiment.judge import judge_arms, promote_hint, recommend
from trtops_operator.experiment.report import chart_figure, render_markdown
from trtops_operator.models import RecommendRule

from tests.experiment.test_decision import agreement, arm
from tests.operator.test_crd_validation import VALID

pytest.importorskip("matplotlib")
RULE = RecommendRule.model_validate({"minOutputAgreement": {"cosine": 0.99}})


def _status() -> dict[str, object]:
    base = arm("baseline", "fp32", 10.0, pod_hourly_cost=0.02, cost_per_million=0.5)
    results = judge_arms(
        base,
        [
            arm("fp16", "fp16", 6.0, agreement=agreement(0.99995, 1.0), pod_hourly_cost=0.02),
            arm("int8", "int8", 5.0, agreement=agreement(0.7, 0.5), pod_hourly_cost=0.02),
        ],
        RULE,
        50,
    )
    rec = recommend(results, RULE)
    return {
        "phase": "Completed",
        "baseline": {"name": "baseline", "precision": "fp32", "revision": "r-baseline"},
        "startedAt": "2026-01-01T00:00:00Z",
        "completedAt": "2026-01-01T00:05:00Z",
        "rule": {
            **RULE.model_dump(mode="json", by_alias=True, exclude_none=True),
            "minShadowSamples": 50,
        },
        "backend": "onnxruntime",
        "currency": "USD",
        "results": [r.to_json() for r in results],
        "recommendation": rec.to_json(promote_hint(rec)),
    }


def test_the_markdown_says_what_won_why_and_how_to_promote_it() -> None:
    md = render_markdown("bert", "ml", _status())
    assert "**fp16 (fp16)**" in md
    assert "set spec.build.precision to fp16 and remove spec.experiment" in md
    assert "| int8 | int8 | 30 |" in md
    assert "cosine 0.7000 < minOutputAgreement.cosine 0.99" in md  # why int8 lost
    assert "not reported" in md  # GPU figures on a CPU run
    assert "Ran 2026-01-01T00:00:00Z to 2026-01-01T00:05:00Z (300 s)" in md
    assert "| faster |" in md


def test_a_failed_experiment_says_which_variant_failed_and_why() -> None:
    status = {k: v for k, v in _status().items() if k in ("baseline", "rule", "backend")}
    status |= {
        "phase": "Failed",
        "message": "variant build failed: int8 (see variants[].message)",
        "variants": [
            {"name": "fp16", "precision": "fp16", "state": "Built"},
            {"name": "int8", "precision": "int8", "message": "CalibrationFailed: no rows"},
        ],
    }
    md = render_markdown("bert", "ml", status)
    assert "No variant has served yet." in md
    assert "Ran ?" not in md
    assert "- int8 (int8): CalibrationFailed: no rows" in md


def test_the_chart_is_a_non_blank_png(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    series = {"baseline": [(0.0, 12.0), (30.0, 11.0)], "fp16": [(0.0, 7.0), (30.0, 6.5)]}
    fig = chart_figure("bert", _status(), series)
    path = tmp_path / "chart.png"
    fig.savefig(path)
    plt.close(fig)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (1100, 450)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None
    assert len(colors) > 50  # bars, lines and text, not a blank canvas


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.usefixtures("trtengine_crd")
def test_the_command_says_what_is_wrong_without_a_traceback(
    k8s_api: Any, namespace: str, kubeconfig: Path, tmp_path: Path
) -> None:
    """A wrong engine name and an unreachable Prometheus end the command with exit status 1
    and one line saying what to fix, and nothing written; with the Prometheus left out, the
    same engine's report is written."""
    from kubernetes import client

    out = tmp_path / "report"

    def report(engine: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trtops_operator.experiment.report", engine, "-n", namespace,
             "--out", str(out), "--kubeconfig", str(kubeconfig), *extra],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    wrong = report("bert")
    assert wrong.returncode == 1, wrong.stderr
    assert f"no TrtEngine 'bert' in namespace '{namespace}'" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    api = client.CustomObjectsApi(k8s_api)
    body = copy.deepcopy(VALID) | {"metadata": {"name": "bert"}}
    api.create_namespaced_custom_object("trtops.dev", "v1alpha1", namespace, "trtengines", body)
    api.patch_namespaced_custom_object_status(
        "trtops.dev", "v1alpha1", namespace, "trtengines", "bert",
        {"status": {"experiment": _status()}},
    )  # fmt: skip
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = report("bert", "--prometheus", f"http://127.0.0.1:{port}")
    assert down.returncode == 1, down.stderr
    assert f"Prometheus at http://127.0.0.1:{port}" in down.stderr
    assert "leave out --prometheus" in down.stderr
    assert "Traceback" not in down.stderr
    assert not out.exists()

    written = report("bert")
    assert written.returncode == 0, written.stderr
    assert "**fp16 (fp16)**" in (out / "bert-experiment.md").read_text()
    assert (out / "bert-experiment.png").stat().st_size > 0
