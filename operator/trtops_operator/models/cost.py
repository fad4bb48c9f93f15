"""``spec.cost``: the prices an engine's serving is costed at (``trtops_operator.cost``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from trtops_operator.models.base import SpecModel

COST_NEEDS_A_PRICE = (
    "spec.cost needs gpuHourPrice or cpuHourPrice above 0"
    " (leave spec.cost out to use the operator's prices)"
)


class Cost(SpecModel):
    """One GPU for one hour, one CPU core for one hour, in the ISO 4217 ``currency``."""

    gpu_hour_price: Annotated[float, Field(ge=0, le=1000000)]
    cpu_hour_price: Annotated[float, Field(ge=0, le=1000000)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"

    @model_validator(mode="after")
    def _a_price(self) -> Cost:
        if self.gpu_hour_price <= 0 and self.cpu_hour_price <= 0:
            raise ValueError(COST_NEEDS_A_PRICE)
        return self
