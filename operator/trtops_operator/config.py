"""The operator's settings, typed once: every setting has one default, here.

Three ways in, all reading this class: the command-line flags (``__main__`` builds one flag per
field, its default taken from here), the environment (``TRTOPS_<FIELD>``, which is how the flags
reach the handlers module kopf loads by name) and the Helm chart (``values.yaml`` passes each value
as a flag; ``tests/operator/test_config.py`` checks the chart's defaults equal these).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from trtops_operator import __version__
from trtops_operator.models import Cost

__all__ = ["DEFAULT_WORKER_IMAGE", "ENV_PREFIX", "OperatorConfig"]

DEFAULT_WORKER_IMAGE = f"ghcr.io/trtops/trtops-worker:{__version__}"
ENV_PREFIX = "TRTOPS_"


class OperatorConfig(BaseModel):
    """What the operator needs besides the resources themselves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_image: str = Field(DEFAULT_WORKER_IMAGE, description="image of the build and serve pods")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8080, description="port of the operator's Prometheus metrics (0: off)"
    )
    metrics_address: str = Field(
        "0.0.0.0",  # noqa: S104 - scraped from other pods
        description="address the metrics server binds",
    )
    job_ttl_seconds: Annotated[int, Field(ge=0)] = Field(
        86400, description="finished build Jobs (and their results) are kept this long"
    )
    resync_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0, description="every engine is re-checked this often even without events"
    )
    # A reconcile mostly waits on its API writes, so this matches the API threads: with 4,
    # 500 engines' build results and rollouts queued behind each other.
    workers: Annotated[int, Field(ge=1)] = Field(
        16, description="engines the work queue reconciles at once"
    )
    # The kubernetes client blocks; each thread has its own pooled connection, so build results
    # and readiness do not queue behind every creation.
    api_threads: Annotated[int, Field(ge=1)] = Field(
        16, description="API requests in flight at once (threads and pooled connections)"
    )
    # Canary analyses query a Prometheus a tenant names in a spec: only the installer's.
    prometheus_addresses: str = Field(
        "",
        description="comma-separated Prometheus base URLs canary analyses may query; a spec"
        " naming any other gets no analysis (PrometheusNotAllowed). Empty: none",
    )
    analysis_workers: Annotated[int, Field(ge=1)] = Field(
        4, description="canary analyses in flight at once, apart from the reconcile workers"
    )
    # What a tenant's spec may ask of the cluster's nodes, and what its pods may use.
    allowed_toleration_keys: str = Field(
        "",
        description="comma-separated taint keys a spec's tolerations may name ('*': any; empty:"
        " any key, but never the empty key that tolerates every taint)",
    )
    allowed_node_selector_keys: str = Field(
        "", description="comma-separated node label keys a spec's nodeSelector may use (empty: any)"
    )
    serve_memory_request: str = Field(
        "1Gi", description="memory request of a serving pod whose spec sets none"
    )
    serve_memory_limit: str = Field(
        "8Gi", description="memory limit of a serving pod whose spec sets none"
    )
    build_memory_limit: str = Field("16Gi", description="memory limit of a build pod")
    watch_timeout_seconds: Annotated[int, Field(ge=1)] = Field(
        300, description="watches are re-opened this often (one request per kind while idle)"
    )
    # Retries of a failing reconcile: this, doubled per failure in a row, capped below.
    retry_base_seconds: Annotated[float, Field(gt=0)] = Field(
        1.0, description="first retry delay of a failing reconcile"
    )
    retry_max_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0, description="longest retry delay of a failing reconcile"
    )

    # Prices for cost per 1M inferences (trtops_operator.cost); an engine's spec.cost overrides.
    gpu_hour_price: Annotated[float, Field(ge=0, le=1000000)] = Field(
        0.0, description="price of one GPU for one hour (0 with cpu-hour-price 0: no cost)"
    )
    cpu_hour_price: Annotated[float, Field(ge=0, le=1000000)] = Field(
        0.0, description="price of one CPU core for one hour"
    )
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = Field(
        "USD", description="ISO 4217 currency of the two prices"
    )

    @staticmethod
    def env_name(field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Settings from ``TRTOPS_<FIELD>`` variables; unset ones keep their defaults.
        Raises ``pydantic.ValidationError`` naming the variable's field on a bad value."""
        e = os.environ if env is None else env
        given = {f: e[cls.env_name(f)] for f in cls.model_fields if cls.env_name(f) in e}
        return cls.model_validate(given)

    @property
    def toleration_keys(self) -> frozenset[str]:
        return frozenset(_items(self.allowed_toleration_keys))

    @property
    def node_selector_keys(self) -> frozenset[str]:
        return frozenset(_items(self.allowed_node_selector_keys))

    @property
    def allowed_prometheus(self) -> tuple[str, ...]:
        """:attr:`prometheus_addresses` as a list."""
        return _items(self.prometheus_addresses)

    @property
    def prices(self) -> Cost | None:
        """The installer's prices (the chart's ``cost`` values) as an engine's ``spec.cost``;
        ``None`` when both are 0 (no cost is reported)."""
        if self.gpu_hour_price <= 0 and self.cpu_hour_price <= 0:
            return None
        return Cost(
            gpu_hour_price=self.gpu_hour_price,
            cpu_hour_price=self.cpu_hour_price,
            currency=self.currency,
        )

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`."""
        return {self.env_name(f): str(v) for f, v in self.model_dump().items()}


def _items(csv: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated setting (flags and env carry lists this way)."""
    return tuple(item.strip() for item in csv.split(",") if item.strip())
