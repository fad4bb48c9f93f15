"""Cost per 1M inferences (trtops_operator.cost): the formula on figures a user can check by hand,
the pod requests read from the Deployments the operator really writes, the prices an engine is
costed at, and the per-revision price the operator exports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from trtops_operator import cost, keys, manifests, metrics
from trtops_operator.config import OperatorConfig
from trtops_operator.models import Cost, TrtEngineSpec

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CONFIG = OperatorConfig(worker_image="registry.example/trtops-worker:test")
# A cloud GPU instance's list prices, roughly: $2.50 per GPU-hour, $0.04 per core-hour.
PRICES = Cost(gpu_hour_price=2.5, cpu_hour_price=0.04)


def test_cost_per_million_by_hand() -> None:
    pod = cost.PodFootprint(gpus=1, cpu_cores=4)
    # 2.50 + 4 * 0.04 = 2.66 per pod-hour; two pods 5.32 per hour; 500/s is 1.8M per hour.
    assert cost.pod_hourly_cost(pod, PRICES) == pytest.approx(2.66)
    assert cost.hourly_cost(pod, 2, PRICES) == pytest.approx(5.32)
    assert cost.cost_per_million(pod, 2, PRICES, 500.0) == pytest.approx(5.32 / 1.8)


def test_twice_the_throughput_halves_the_cost_and_idle_has_none() -> None:
    pod = cost.PodFootprint(gpus=1, cpu_cores=1)
    slow = cost.cost_per_million(pod, 1, PRICES, 100.0)
    fast = cost.cost_per_million(pod, 1, PRICES, 200.0)
    assert slow is not None
    assert fast is not None
    assert math.isclose(slow, 2 * fast)
    assert cost.cost_per_million(pod, 1, PRICES, 0.0) is None
    with pytest.raises(ValueError, match="throughput"):
        cost.cost_per_million(pod, 1, PRICES, -1.0)
    with pytest.raises(ValueError, match="replicas"):
        cost.hourly_cost(pod, -1, PRICES)


@pytest.mark.parametrize(
    ("quantity", "cores"),
    [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), (3, 3.0), ("1k", 1000.0)],
)
def test_quantities(quantity: str | int, cores: float) -> None:
    assert cost.cpu_cores(quantity) == pytest.approx(cores)


def test_a_quantity_that_is_none_is_refused() -> None:
    with pytest.raises(ValueError, match="lots"):
        cost.cpu_cores("lots")


def _engine(sample: str, **serving: Any) -> manifests.Engine:
    doc = yaml.safe_load((SAMPLES / sample).read_text())
    doc["spec"].setdefault("serving", {}).update(serving)
    return manifests.Engine(
        name=doc["metadata"]["name"],
        namespace="ml",
        uid="uid-1",
        spec=TrtEngineSpec.model_validate(doc["spec"]),
    )


def _deployment_pod(e: manifests.Engine, target: str | None, backend: str) -> dict[str, Any]:
    plan = manifests.PlanRef(
        target=target, key="k", path="/plans/x", precision="int8", backend=backend
    )
    dep = manifests.render_deployment(e, plan, name="n", revision="r1", config=CONFIG)
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize(
    ("resources", "gpus", "cores"),
    [
        ({"requests": {"cpu": "2", "memory": "4Gi"}}, 1.0, 2.0),
        ({"limits": {"cpu": "1500m"}}, 1.0, 1.5),  # a limit alone is the request
        (None, 1.0, 0.0),  # no CPU request: the GPU is all that is priced
    ],
)
def test_the_footprint_is_what_the_serving_deployment_requests(
    resources: dict[str, Any] | None, gpus: float, cores: float
) -> None:
    """The footprint the operator prices (from the spec) is the one its Deployment asks for."""
    serving = {"resources": resources} if resources else {}
    e = _engine("resnet-int8.yaml", **serving)
    product = e.spec.build.targets[0].gpu_product
    written = cost.pod_footprint(_deployment_pod(e, product, "tensorrt"))
    assert written == cost.PodFootprint(gpus=gpus, cpu_cores=cores)
    assert cost.serving_footprint(e.spec.serving, "tensorrt", product) == written


def test_a_cpu_plan_costs_no_gpu() -> None:
    e = _engine("resnet-int8.yaml", resources={"requests": {"cpu": "4"}})
    written = cost.pod_footprint(_deployment_pod(e, None, "onnxruntime"))
    assert written == cost.PodFootprint(gpus=0, cpu_cores=4)
    assert cost.serving_footprint(e.spec.serving, "onnxruntime", keys.CPU_TARGET) == written


def test_the_spec_prices_override_the_operators_and_none_means_no_cost() -> None:
    e = _engine("resnet-int8.yaml")
    assert cost.prices_for(e.spec, PRICES) == PRICES
    assert cost.prices_for(e.spec, None) is None
    own = Cost(gpu_hour_price=1.9, cpu_hour_price=0.03, currency="EUR")
    spec = e.spec.model_copy(update={"cost": own})
    assert cost.prices_for(spec, PRICES) == own
    assert OperatorConfig().prices is None  # the chart's default: both 0
    assert OperatorConfig(gpu_hour_price=2.5).prices == Cost(gpu_hour_price=2.5, cpu_hour_price=0)


def test_a_cost_without_a_price_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValidationError, match=r"leave spec\.cost out"):
        Cost(gpu_hour_price=0, cpu_hour_price=0)


def _scrape(body: dict[str, Any], prices: Cost | None) -> dict[tuple[str, ...], float]:
    registry = CollectorRegistry()
    source = {(body["metadata"]["namespace"], body["metadata"]["name"]): [body]}
    registry.register(metrics.EngineCollector(lambda: source, prices))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "trtops_revision_pod_hourly_cost":
                lbl = s.labels
                out[(lbl["revision"], lbl["precision"], lbl["role"], lbl["currency"])] = s.value
    return out


def _body(spec_cost: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = yaml.safe_load((SAMPLES / "resnet-int8.yaml").read_text())
    doc["spec"]["serving"] = {"resources": {"requests": {"cpu": "2"}}}
    if spec_cost:
        doc["spec"]["cost"] = spec_cost
    plan = {"target": "NVIDIA-H100-80GB-HBM3", "backend": "tensorrt"}
    doc["metadata"].update(namespace="ml", uid="u")
    doc["status"] = {
        "stable": {"revision": "r1", "weight": 90, "plans": [{**plan, "precision": "fp32"}]},
        "canary": {"revision": "r2", "weight": 10, "plans": [{**plan, "precision": "int8"}]},
    }
    return doc


def test_the_operator_exports_each_revisions_pod_price_per_hour() -> None:
    # One GPU and two cores: 2.50 + 2 * 0.04 = 2.58 per hour, for stable and canary alike.
    assert _scrape(_body(), PRICES) == {
        ("r1", "fp32", "stable", "USD"): pytest.approx(2.58),
        ("r2", "int8", "canary", "USD"): pytest.approx(2.58),
    }
    euros = {"gpuHourPrice": 2.0, "cpuHourPrice": 0.5, "currency": "EUR"}
    assert _scrape(_body(euros), PRICES)[("r2", "int8", "canary", "EUR")] == pytest.approx(3.0)
    assert _scrape(_body(), None) == {}  # no prices: no cost series, rather than a cost of 0


def test_changing_the_prices_rebuilds_and_restarts_nothing() -> None:
    """Prices are bookkeeping: the build keys (so the revision) and the serving Deployment stay."""
    e = _engine("resnet-int8.yaml")
    priced = manifests.Engine(
        name=e.name,
        namespace=e.namespace,
        uid=e.uid,
        spec=e.spec.model_copy(update={"cost": Cost(gpu_hour_price=9.0, cpu_hour_price=1.0)}),
    )
    product = e.spec.build.targets[0].gpu_product
    assert keys.build_key(priced.spec, product, "img") == keys.build_key(e.spec, product, "img")
    assert _deployment_pod(priced, product, "tensorrt") == _deployment_pod(e, product, "tensorrt")
