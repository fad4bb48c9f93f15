"""What one measurement of a running experiment does to ``status.experiment``, pure: when the
next one is due, the hard-SLO stops, the per-variant results and, at the end, the recommendation
(see :mod:`trtops_operator.experiment.step` for the phases)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trtops_operator.canary.judge import histogram_quantile
from trtops_operator.decision import Event
from trtops_operator.experiment.judge import ArmSample, judge_arms, promote_hint, recommend
from trtops_operator.models import Experiment
from trtops_operator.status_model import PlanRecord

__all__ = ["Measured", "measurement_due", "parse_time", "readable", "record_measurement"]


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 time as status holds it (``Z`` or an offset)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Measured:
    """A measurement of every arm (baseline first) over the experiment so far, taken at
    ``at`` (RFC 3339); ``error``: why there is none (Prometheus trouble), said in status."""

    at: str
    key: str
    arms: tuple[ArmSample, ...] = ()
    error: str = ""


def measurement_due(status: Mapping[str, Any] | None, spec: Experiment, now: dt.datetime) -> bool:
    """Whether a Running experiment should be measured now: ``intervalSeconds`` after the last
    measurement (or its start), or at once when its duration is over."""
    if not status or status.get("phase") != "Running" or not status.get("startedAt"):
        return False
    if not readable(status):
        return False  # the next pass starts it over
    last = parse_time(str(status.get("lastMeasuredAt") or status["startedAt"]))
    if (now - last).total_seconds() >= spec.interval_seconds:
        return True
    ends = status.get("endsAt")
    return bool(ends) and now >= parse_time(str(ends)) and last < parse_time(str(ends))


def readable(record: Mapping[str, Any]) -> bool:
    """Whether a recorded ``status.experiment`` has the shapes this step reads."""
    try:
        for k in ("startedAt", "endsAt", "lastMeasuredAt"):
            if record.get(k) is not None:
                parse_time(str(record[k]))
        for v in record.get("variants") or []:
            for p in v.get("plans") or []:
                PlanRecord.model_validate(p)
    except (ValueError, TypeError, AttributeError):  # pydantic's ValidationError is a ValueError
        return False
    return isinstance(record.get("variants") or [], list)


def record_measurement(
    exp: Experiment,
    status: dict[str, Any],
    measured: Measured,
    variants: list[dict[str, Any]],
    now: str,
    events: list[Event],
) -> None:
    """Record a measurement in ``status`` (``status.experiment``, changed in place): results,
    hard-SLO stops (each told in ``events``), and the end with its recommendation."""
    by_name = {e["name"]: e for e in variants}
    arms = list(measured.arms)
    hard = exp.hard_slo
    for i, arm in enumerate(arms[1:], start=1):
        entry = by_name.get(arm.name)
        if entry is None:
            continue
        if entry.get("stopped"):
            arms[i] = _with_stop(arm, entry["stopped"])
            continue
        why = _hard_breach(hard, arm) if hard is not None else ""
        if why:
            entry["stopped"] = why
            arms[i] = _with_stop(arm, why)
            events.append(Event("Warning", "ExperimentVariantStopped", f"{arm.name}: {why}"))
    results = judge_arms(arms[0], arms[1:], exp.recommend, exp.min_shadow_samples)
    status["results"] = [r.to_json() for r in results]
    status["lastMeasuredAt"] = measured.at
    ended = bool(status.get("endsAt")) and parse_time(measured.at) >= parse_time(status["endsAt"])
    serving = [r for r in results if not r.arm.stopped]
    # minRequests ends it only once the rule's agreement can be judged too: a variant with too
    # few shadow rows would lose for lack of data, not for its answers.
    want = exp.recommend.min_output_agreement
    rows_needed = exp.min_shadow_samples if want is not None else 0
    if exp.min_requests is not None and all(
        r.requests >= exp.min_requests and (i == 0 or r.shadow_rows >= rows_needed)
        for i, r in enumerate(serving)
    ):
        ended = True
    if ended:
        rec = recommend(results, exp.recommend)
        status["recommendation"] = rec.to_json(promote_hint(rec))
        status |= {
            "phase": "Completed",
            "completedAt": now,
            "message": f"recommended: {rec.name} ({rec.precision});"
            f" to promote it, {promote_hint(rec)}",
        }
        events.append(Event("Normal", "ExperimentCompleted", rec.reason[:1024]))


def _with_stop(arm: ArmSample, why: str) -> ArmSample:
    return replace(arm, stopped=why)


def _hard_breach(hard: Any, arm: ArmSample) -> str:
    s = arm.sample
    if hard.max_error_rate is not None and s.requests > 0:
        rate = s.server_errors / s.requests
        if rate > hard.max_error_rate:
            return f"error rate {rate:.4f} > hardSlo.maxErrorRate {hard.max_error_rate:g}"
    if hard.p99_latency_ms is not None:
        p99 = histogram_quantile(0.99, s.buckets)
        if p99 is not None and p99 * 1000 > hard.p99_latency_ms:
            return f"p99 {p99 * 1000:.2f} ms > hardSlo.p99LatencyMs {hard.p99_latency_ms:g}"
    return ""
