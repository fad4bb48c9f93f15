"""Request sampling and scheduled rebuilds: ``spec.serving.sampling``, the ``source`` of
calibration and validation data, ``spec.build.schedule`` and ``spec.build.regressionGate``
(docs/experiments.md, "Request sampling" and "Scheduled rebuilds")."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from croniter import croniter
from pydantic import AfterValidator, Field

from trtops_operator.models.base import SpecModel

__all__ = [
    "CRON_MESSAGE",
    "CRON_PATTERN",
    "CRON_VALUES",
    "Cron",
    "RegressionGate",
    "SampleSourced",
    "Sampling",
    "next_fire",
]

# Five fields (minute hour day-of-month month day-of-week) or a macro: the CRD's pattern. Its
# CEL rule (the same CRON_VALUES, the message CRON_MESSAGE) checks each field's values, so the
# API server refuses '61 * * * *' instead of the operator failing on it later; croniter, what
# the operator fires by, checks once more.
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|[0-9A-Za-z*/,-]+( +[0-9A-Za-z*/,-]+){4})$"
)


def _cron_field(value: str, alone: str = "[*]") -> str:
    """A list of '*' (or ``alone``), a value or a range a-b, each with an optional step /n
    (n >= 1)."""
    item = f"({alone}|({value})(-({value}))?)(/[1-9][0-9]*)?"
    return f"({item}(,{item})*)"


_MONTHS = "(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_DAYS = "(?i:sun|mon|tue|wed|thu|fri|sat)"
# No backslash in it: it sits in a CEL string literal in the CRD (tests/operator/test_crd_drift.py
# gives both the same cases).
CRON_VALUES = (
    "^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + " +".join(
        (
            _cron_field("[0-5]?[0-9]"),  # minute
            _cron_field("[01]?[0-9]|2[0-3]"),  # hour
            _cron_field("0?[1-9]|[12][0-9]|3[01]", alone="[*]|L"),  # day of month (L: the last)
            _cron_field(f"0?[1-9]|1[0-2]|{_MONTHS}"),  # month
            _cron_field(f"[0-7]|{_DAYS}"),  # day of week (0 and 7: Sunday)
        )
    )
    + ")$"
)
CRON_MESSAGE = (
    "spec.build.schedule must be five cron fields (UTC) with values in range: minute 0-59,"
    " hour 0-23, day-of-month 1-31 or L, month 1-12 or JAN-DEC, day-of-week 0-7 or SUN-SAT;"
    " each field *, a value, a range a-b or a list a,b, each optionally with a step /n (n >= 1),"
    " e.g. '0 3 * * *'; or a macro: @hourly, @daily, @weekly, @monthly, @yearly"
)


def _cron(expression: str) -> str:
    if not re.fullmatch(CRON_VALUES, expression) or not croniter.is_valid(expression):
        raise ValueError(f"{CRON_MESSAGE} (got {expression!r})")
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
