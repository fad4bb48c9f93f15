"""One default per operator setting: the flags, the environment and the chart agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from trtops_operator.__main__ import parse_args
from trtops_operator.config import OperatorConfig

CHART = Path(__file__).resolve().parents[2] / "charts" / "trtops"


def test_flags_default_to_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OperatorConfig.model_fields:
        monkeypatch.delenv(OperatorConfig.env_name(name), raising=False)
    args = parse_args([])
    flags = {name: getattr(args, name) for name in OperatorConfig.model_fields}
    assert OperatorConfig.model_validate(flags) == OperatorConfig()


def test_environment_round_trip_and_bad_values_name_the_setting() -> None:
    config = OperatorConfig(metrics_port=9999, workers=3, image_pull_policy="Always")
    assert OperatorConfig.from_env(config.to_env()) == config
    with pytest.raises(ValidationError, match="workers"):
        OperatorConfig.from_env({"TRTOPS_WORKERS": "0"})


def test_chart_values_match_the_config_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    default = OperatorConfig()
    assert values["metrics"]["port"] == default.metrics_port
    assert values["operator"]["jobTTLSeconds"] == default.job_ttl_seconds
    assert values["operator"]["resyncSeconds"] == default.resync_seconds
    assert values["operator"]["workers"] == default.workers
    assert values["operator"]["apiThreads"] == default.api_threads
    assert values["operator"]["analysisWorkers"] == default.analysis_workers
    assert ",".join(values["prometheus"]["addresses"]) == default.prometheus_addresses
    assert values["worker"]["image"]["pullPolicy"] == default.image_pull_policy
    assert values["cost"]["gpuHourPrice"] == default.gpu_hour_price
    assert values["cost"]["cpuHourPrice"] == default.cpu_hour_price
    assert values["cost"]["currency"] == default.currency
