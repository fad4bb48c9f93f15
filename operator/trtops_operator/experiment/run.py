"""When a Running experiment is due, measure it apart from the reconcile (the driver's side of
:mod:`trtops_operator.experiment.step`): the first pass that finds it due starts the
measurement, the pass the measurement wakes hands it to :func:`~trtops_operator.reconcile.decide`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from trtops_operator import keys
from trtops_operator.canary.prometheus import PrometheusError
from trtops_operator.cost import Prices, prices_for, serving_footprint
from trtops_operator.experiment.measurement import Measured, measurement_due
from trtops_operator.experiment.prometheus import Arm, MeasurePool, measure_arms
from trtops_operator.models import TrtEngineSpec
from trtops_operator.status_model import EngineStatus

__all__ = ["arms_of", "poll_measurement"]


def _arm(
    spec: TrtEngineSpec, engine: str, name: str, precision: str, revision: str, weight: int,
    plans: Sequence[Mapping[str, Any]], stopped: str = "",
) -> Arm:  # fmt: skip
    plan = plans[0] if plans else {}
    target = str(plan.get("target") or keys.CPU_TARGET)
    backend = str(plan.get("backend") or spec.serving.backend)
    product = None if target == keys.CPU_TARGET and backend == "onnxruntime" else target
    return Arm(
        name,
        precision,
        revision,
        weight,
        keys.serving_name(f"{engine}-{revision}", product),
        serving_footprint(spec.serving, backend, target),
        stopped,
    )


def arms_of(name: str, spec: TrtEngineSpec, status: EngineStatus) -> list[Arm]:
    """The baseline (the stable revision) then each variant, as ``status.experiment`` records."""
    exp = status.experiment or {}
    stable = status.stable
    base_rev = str((exp.get("baseline") or {}).get("revision") or "")
    base_plans = [p.to_json() for p in stable.plans] if stable is not None else []
    weights = sum(
        int(v.get("weight") or 0) for v in exp.get("variants") or [] if not v.get("stopped")
    )
    arms = [_arm(spec, name, "baseline", spec.build.precision, base_rev, 100 - weights, base_plans)]
    for v in exp.get("variants") or []:
        stopped = str(v.get("stopped") or "")
        arms.append(
            _arm(
                spec,
                name,
                str(v.get("name")),
                str(v.get("precision")),
                str(v.get("revision") or ""),
                0 if stopped else int(v.get("weight") or 0),
                list(v.get("plans") or []),
                stopped,
            )
        )
    return arms


def poll_measurement(
    pool: MeasurePool,
    body: Mapping[str, Any],
    allowed: Collection[str],
    prices: Prices | None = None,
) -> Measured | None:
    """The measurement of the engine's due experiment once it is in, else None. ``prices``: the
    operator's (an engine's ``spec.cost`` wins), for cost per 1M inferences."""
    if ((body.get("status") or {}).get("experiment") or {}).get("phase") != "Running":
        return None  # the common case, before parsing anything
    try:
        spec = TrtEngineSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None
    exp = spec.experiment
    status = EngineStatus.parse(body.get("status"))
    if exp is None or not measurement_due(status.experiment, exp, dt.datetime.now(dt.UTC)):
        return None
    meta = body["metadata"]
    record = status.experiment or {}
    key = str(record.get("key") or "")
    started = dt.datetime.fromisoformat(str(record["startedAt"]).replace("Z", "+00:00"))
    prometheus = exp.prometheus or (
        spec.rollout.analysis.prometheus if spec.rollout and spec.rollout.analysis else None
    )
    if prometheus is None:
        return None
    arms = arms_of(meta["name"], spec, status)
    model = spec.serving.model_name or meta["name"]
    at_start = dt.datetime.now(dt.UTC)
    window = max(int((at_start - started).total_seconds()), 1)
    at = at_start.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    async def start() -> Measured:
        samples = await measure_arms(
            prometheus.address,
            allowed=allowed,
            model=model,
            namespace=meta["namespace"],
            arms=arms,
            window=window,
            prices=prices_for(spec, prices),
            replicas=auto.min_replicas
            if (auto := spec.serving.autoscaling)
            else spec.serving.replicas,
        )
        return Measured(at, key, samples)

    token = (key, record.get("lastMeasuredAt"), record.get("startedAt"))
    result = pool.poll((meta["namespace"], meta["name"]), token, start)
    if result is None:
        return None
    if isinstance(result, PrometheusError):
        return Measured(at, key, error=f"{result.reason}: {result.message}"[:512])
    assert isinstance(result, Measured)
    return result
