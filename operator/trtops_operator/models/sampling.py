"""Request sampling and scheduled rebuilds: ``spec.serving.sampling``, the ``source`` of
calibration and validation data, ``spec.build.schedule`` and ``spec.build.regressionGate``
(docs/experiments.md, "Request sampling" and "Scheduled rebuilds")."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from croniter import croniter
from pydantic import AfterValidator, Field

from trtops_operator.models.base import SpecModel

__all__ = [
    "CRON_PATTERN",
    "Cron",
    "RegressionGate",
    "SampleSourced",
    "Sampling",
    "next_fire",
]

# Five fields (minute hour day-of-month month day-of-week) or a macro, as the CRD's pattern
# admits; croniter then checks each field's values (the operator's own check, said in status).
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|[0-9A-Za-z*/,-]+( +[0-9A-Za-z*/,-]+){4})$"
)


def _cron(expression: str) -> str:
    if not croniter.is_valid(expression) or len(expression.split()) not in (1, 5):
        raise ValueError(
            f"spec.build.schedule {expression!r} is not a cron schedule: five fields"
            " (minute hour day-of-month month day-of-week), e.g. '0 3 * * *', in UTC"
        )
    return expression


Cron = Annotated[str, Field(max_length=128, pattern=CRON_PATTERN), AfterValidator(_cron)]


def next_fire(expression: str, after: dt.datetime) -> dt.datetime:
    """The first time ``expression`` (UTC) fires strictly after ``after`` (timezone-aware)."""
    fire = croniter(expression, after.astimezone(dt.UTC)).get_next(dt.datetime)
    assert isinstance(fire, dt.datetime)
    return fire.astimezone(dt.UTC)


class Sampling(SpecModel):
    """A sample of the inputs the serving pods answer, kept on the storage claim. The inputs
    are the clients' data and may be sensitive (docs/security.md): opt-in.

    ``maxBytes``: the sample of one serving pod at most (its front ends share it);
    ``windowSeconds``: the sample is uniform over the requests of the current window."""

    enabled: bool = False
    max_bytes: Annotated[int, Field(ge=4096, le=8589934592)] = 67108864
    window_seconds: Annotated[int, Field(ge=60, le=2592000)] = 86400


class SampleSourced(SpecModel):
    """Calibration or validation data that may come from the request sample: ``source:
    sample`` uses the sample once it holds ``minSampleRows`` rows, the file at ``uri`` until
    then (a new engine has served nothing)."""

    source: Literal["uri", "sample"] = "uri"
    min_sample_rows: Annotated[int, Field(ge=1, le=100000)] = 64


class RegressionGate(SpecModel):
    """When a scheduled rebuild's plan may replace the serving one: measured in the same build
    Job, on the same GPU and inputs, its p50 latency at every batch size is at most
    ``maxLatencyRatio`` times the serving plan's, and per output its top-1 agreement and cosine
    similarity with FP32 are at most ``maxAccuracyDrop`` below the serving plan's."""

    max_latency_ratio: Annotated[float, Field(ge=1, le=10)] = 1.1
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.005
