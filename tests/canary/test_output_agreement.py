"""Output agreement on shadow traffic as a canary SLO (``slo.minOutputAgreement``).

The pure judgement first; then the whole path on real parts: real ``trtops-worker serve``
processes on ONNX Runtime (stable pods shadowing every request to a canary), a real Prometheus
scraping them, and the operator's :func:`analyse`. The "bad" canary is the same architecture
with other weights (a model whose outputs differ, standing in for an INT8 plan calibrated on bad
data: no TensorRT runs here); it is as fast and as error-free as stable, so only the output
agreement can fail it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError
from trtops_operator import manifests
from trtops_operator.canary.analysis import (
    AgreementSample,
    RevisionSample,
    Selector,
    agreement_queries,
    evaluate,
)
from trtops_operator.canary.prometheus import PrometheusClient
from trtops_operator.canary.runner import analyse, measure, measure_agreement
from trtops_operator.config import OperatorConfig
from trtops_operator.models import Analysis, Judge, Slo, TrtEngineSpec
from trtops_operator.observation import Observed
from trtops_operator.routing import decide_routing
from trtops_operator.serving import Serving
from trtops_worker import samples

from tests.canary.test_prometheus import wait_scraped
from tests.serve.conftest import conv_input, infer_body
from tests.support.prometheus import Prometheus
from tests.support.worker import Server, start_server

PROM = {"address": "http://prometheus:9090"}


def _healthy(n: float) -> RevisionSample:
    return RevisionSample({"success": n}, ((0.01, n * 0.5), (0.02, n), (float("inf"), n)), 30.0)


def _slo(**agreement: float) -> Slo:
    return Slo.model_validate({"minOutputAgreement": agreement})


def test_low_cosine_fails_with_the_numbers_even_when_latency_and_errors_pass() -> None:
    agreement = AgreementSample(
        rows={"logits": 400.0, "probs": 400.0},
        cosine_sum={"logits": 392.0, "probs": 240.0},  # means 0.98 and 0.60: probs decides
        top1_compared={"logits": 400.0},
        top1_agreed={"logits": 396.0},
    )
    v = evaluate(
        _healthy(500),
        _healthy(5000),
        slo=_slo(cosine=0.95, top1=0.98),
        judge=Judge(),
        min_requests=100,
        agreement=agreement,
        min_shadow_samples=50,
    )
    assert v.kind == "Failed"
    assert not v.catastrophic
    failed = [c for c in v.checks if c.result == "Failed"]
    assert [c.name for c in failed] == ["outputAgreement"]
    assert "output 'probs' mean cosine 0.6000 < minOutputAgreement.cosine 0.95" in v.reason
    assert "over 400 shadow rows" in v.reason
    assert failed[0].effect == pytest.approx(0.6)
    assert failed[0].threshold == 0.95


def test_top1_floor_and_a_passing_agreement() -> None:
    sample = AgreementSample({"y": 100.0}, {"y": 99.9}, {"y": 100.0}, {"y": 90.0})
    kw = {"judge": Judge(), "min_requests": 100, "agreement": sample, "min_shadow_samples": 50}
    low = evaluate(_healthy(500), _healthy(500), slo=_slo(top1=0.95), **kw)  # type: ignore[arg-type]
    assert low.kind == "Failed"
    assert "output 'y' top-1 agreement 0.9000 < minOutputAgreement.top1 0.95" in low.reason
    ok = evaluate(_healthy(500), _healthy(500), slo=_slo(cosine=0.99, top1=0.9), **kw)  # type: ignore[arg-type]
    check = next(c for c in ok.checks if c.name == "outputAgreement")
    assert check.result == "Passed"
    assert "mean cosine 0.9990 >= 0.99" in check.message


def test_too_few_shadow_rows_hold_the_step() -> None:
    sample = AgreementSample({"y": 12.0}, {"y": 0.0})
    v = evaluate(
        _healthy(500),
        _healthy(500),
        slo=_slo(cosine=0.99),
        judge=Judge(),
        min_requests=100,
        agreement=sample,
        min_shadow_samples=50,
    )
    assert v.kind == "InsufficientData"
    assert "12 shadow rows compared, fewer than shadow.minSamples 50" in v.reason


def test_queries_select_the_revision_pair() -> None:
    q = agreement_queries(Selector("resnet", "r1", {"namespace": "ml"}), "r2", 30)
    assert q.cosine_sum == (
        'sum by (output) (increase(trtops_shadow_cosine_sum{candidate_revision="r2",'
        'model="resnet",namespace="ml",revision="r1"}[30s]))'
    )
    assert "trtops_shadow_top1_agreed_total{" in q.top1_agreed


def test_min_output_agreement_needs_shadow() -> None:
    with pytest.raises(ValidationError, match=r"needs spec\.rollout\.analysis\.shadow"):
        Analysis.model_validate({"prometheus": PROM, "slo": {"minOutputAgreement": {"top1": 1}}})
    a = Analysis.model_validate(
        {"prometheus": PROM, "shadow": {"percent": 10}, "slo": {"minOutputAgreement": {"top1": 1}}}
    )
    assert a.shadow is not None
    assert a.shadow.min_samples == 50


def test_every_serving_pod_gets_the_canary_service_as_shadow_address() -> None:
    engine = _engine({"replicas": {}}, shadow=True, percent=12.5)
    plan = manifests.PlanRef(
        target="cpu", key="k", path="/plans/p", precision="int8", backend="onnxruntime"
    )
    config = OperatorConfig(worker_image="w:1")
    args = manifests.render_deployment(engine, plan, name="d", revision="r1", config=config)[
        "spec"
    ]["template"]["spec"]["containers"][0]["args"]
    url = args[args.index("--shadow-url") + 1]
    assert url == f"http://resnet-canary.ml.svc:8000/v2/models/{engine.model_name}/infer"
    assert args[args.index("--shadow-percent") + 1] == "12.5"


# -- on real parts -------------------------------------------------------------------------


def _serve(tmp: Path, model: Path, revision: str, *shadow: str) -> Server:
    return start_server(
        tmp,
        "--model",
        str(model),
        "--model-name",
        "conv",
        "--revision",
        revision,
        "--precision",
        "fp32",
        "--front-ends",
        "1",
        "--intra-op-threads",
        "1",
        *shadow,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Two stable pods of r1; one shadows to canary ``bad`` (other weights), the other to
    canary ``good`` (the same model)."""
    tmp = tmp_path_factory.mktemp("shadow-fleet")
    samples.save(samples.conv_classifier(width=8, seed=0), tmp / "stable.onnx")
    samples.save(samples.conv_classifier(width=8, seed=1), tmp / "bad.onnx")
    up: dict[str, Server] = {}
    try:
        up["bad"] = _serve(tmp, tmp / "bad.onnx", "bad")
        up["good"] = _serve(tmp, tmp / "stable.onnx", "good")
        for canary in ("bad", "good"):
            up[f"stable-{canary}"] = _serve(
                tmp,
                tmp / "stable.onnx",
                "r1",
                "--shadow-url",
                up[canary].infer_url("conv"),
                "--shadow-percent",
                "50",
            )
        yield up
    finally:
        for s in up.values():
            s.stop()


def test_a_canary_that_answers_differently_fails_on_output_agreement_only(
    fleet: dict[str, Server], prometheus: Callable[..., Prometheus]
) -> None:
    prom = prometheus({"serve": [f"127.0.0.1:{s.metrics_port}" for s in fleet.values()]})
    wait_scraped(prom, len(fleet))

    def send(server: Server, n: int, seed: int) -> None:
        for i in range(n):
            r = requests.post(
                server.infer_url("conv"), json=infer_body(conv_input(2, seed + i)), timeout=10
            )
            assert r.status_code == 200

    # A pair's series appear with its first comparison; increase() counts from the first
    # scrape that saw them, so a little traffic first (in a cluster: the first scrape's worth).
    for canary in ("bad", "good"):
        send(fleet[f"stable-{canary}"], 10, 5000)
        send(fleet[canary], 10, 6000)  # its request series too
    time.sleep(3)
    for canary in ("bad", "good"):
        send(fleet[f"stable-{canary}"], 150, 0)  # ~75 shadowed, 2 rows each
        send(fleet[canary], 120, 1000)  # the canary's own share of live traffic
    analysis = Analysis.model_validate(
        {
            "prometheus": {"address": prom.url},
            "intervalSeconds": 60,
            "minRequests": 50,
            "shadow": {"percent": 50, "minSamples": 60},
            # this machine's CPUs are shared: latency is judged in test_prometheus.py, and
            # here only a gross slowdown may fail a canary
            "judge": {"minLatencyEffect": 10},
            "slo": {"maxErrorRate": 0.01, "minOutputAgreement": {"cosine": 0.99, "top1": 0.95}},
        }
    )

    async def seen(canary: str) -> tuple[float, float]:
        """Shadow rows compared, and the canary's own requests, as Prometheus has them."""
        async with PrometheusClient(prom.url) as c:
            agreement = await measure_agreement(c, Selector("conv", "r1"), canary, 60)
            own = await measure(c, Selector("conv", canary), 60)
            return agreement.samples, own.requests

    deadline = time.monotonic() + 30
    while not all(r >= 60 and n >= 100 for r, n in (asyncio.run(seen(c)) for c in ("bad", "good"))):
        assert time.monotonic() < deadline, "the traffic never reached Prometheus"
        time.sleep(0.5)

    def judge(canary: str):  # type: ignore[no-untyped-def]
        return asyncio.run(
            analyse(
                analysis,
                allowed=[prom.url],
                model="conv",
                canary_revision=canary,
                stable_revision="r1",
            )
        )

    bad = judge("bad")
    print("bad:", bad.kind, bad.reason)
    assert bad.kind == "Failed"
    assert not bad.breaches  # error rate within maxErrorRate
    assert [c.name for c in bad.checks if c.result == "Failed"] == ["outputAgreement"]
    assert "minOutputAgreement.cosine 0.99" in bad.reason
    assert bad.canary is not None
    assert bad.canary.error_rate == 0.0
    good = judge("good")
    print("good:", good.kind, good.reason)
    check = next(c for c in good.checks if c.name == "outputAgreement")
    assert check.result == "Passed", check.message
    assert good.kind != "Failed", good.reason


def _engine(router: dict[str, Any], shadow: bool, percent: float = 10) -> manifests.Engine:
    analysis: dict[str, Any] = {"prometheus": PROM}
    if shadow:
        analysis["shadow"] = {"percent": percent}
    spec = {
        "model": {"uri": "pvc://models/m.onnx"},
        "build": {"precision": "fp16"},
        "storage": {"claimName": "plans"},
        "serving": {"backend": "onnxruntime"},
        "rollout": {
            "trafficRouter": router,
            "steps": [{"setWeight": 10}],
            "analysis": analysis,
        },
    }
    return manifests.Engine("resnet", "ml", "uid", TrtEngineSpec.model_validate(spec))


@pytest.mark.parametrize("shadow", [True, False])
def test_the_canary_service_exists_during_a_canary_with_shadow_whatever_the_router(
    shadow: bool,
) -> None:
    engine = _engine({"replicas": {}}, shadow)
    during = Serving(Observed(), replicas=2, wanted={"d": {}}, canary_mode=True)
    names = [o["metadata"]["name"] for o in decide_routing(engine, "r2", during).apply]
    assert ("resnet-canary" in names) is shadow
    # after the canary (promoted or rolled back) it is deleted: the shadow has no target
    after = Serving(Observed(services={"resnet-canary": "h"}), replicas=2, wanted={"d": {}})
    assert ("Service", "resnet-canary") in decide_routing(engine, "r2", after).delete


@pytest.mark.parametrize("shadow", [True, False])
def test_network_policy_lets_serving_pods_shadow_to_each_other_only_with_shadow(
    shadow: bool,
) -> None:
    engine = _engine({"replicas": {}}, shadow)
    policy = manifests.render_network_policy(engine)
    peers = policy["spec"]["ingress"][0]["from"]
    own = {"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}
    assert (own in peers) is shadow
