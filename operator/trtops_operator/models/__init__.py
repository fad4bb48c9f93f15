"""Typed models of the ``TrtEngine`` spec.

The CRD schema is what refuses bad resources (the API server runs it); these models mirror it so
the operator's code reads typed fields instead of nested dicts, and so a resource that slipped
past an older CRD fails loudly (``extra="forbid"``) instead of being half-understood. Defaults
match the CRD's, so a body that never went through the API server (unit tests) reads the same.

One module per part of the spec: ``base`` (shared field types), ``build`` (``spec.model``,
``spec.build``, ``spec.storage``), ``serving``, ``rollout``, ``experiment`` and ``spec`` (the
whole, with the rules across parts). Import from here:
``from trtops_operator.models import TrtEngineSpec``.
"""

from trtops_operator.models.base import (
    URI_PATTERN,
    Backend,
    CalibrationMethod,
    Dim,
    Dims,
    Name,
    Precision,
    Quantity,
    SecretName,
    Sha256,
    SpecModel,
    TaintKey,
    TaintValue,
    Uri,
)
from trtops_operator.models.build import (
    Accuracy,
    BuildSpec,
    Calibration,
    ModelSource,
    Profile,
    StorageSpec,
    Target,
    Toleration,
    Tolerations,
    Validation,
)
from trtops_operator.models.cost import COST_NEEDS_A_PRICE, Cost
from trtops_operator.models.experiment import Experiment, HardSlo, RecommendRule, Variant
from trtops_operator.models.rollout import (
    AGREEMENT_NEEDS_SHADOW,
    ANALYSIS_NEEDS_WEIGHT,
    Analysis,
    GatewayAPIRouter,
    IstioRouter,
    Judge,
    OutputAgreement,
    PrometheusSource,
    ReplicasRouter,
    RolloutSpec,
    Shadow,
    Slo,
    Step,
    TrafficRouter,
)
from trtops_operator.models.sampling import (
    CRON_PATTERN,
    Cron,
    RegressionGate,
    SampleSourced,
    Sampling,
    next_fire,
)
from trtops_operator.models.serving import Autoscaling, Batching, CpuMemory, Resources, ServingSpec
from trtops_operator.models.spec import (
    AUTOSCALING_NEEDS_WEIGHTS,
    SAMPLE_NEEDS_SAMPLING,
    TrtEngineSpec,
)

__all__ = [
    "AGREEMENT_NEEDS_SHADOW",
    "ANALYSIS_NEEDS_WEIGHT",
    "AUTOSCALING_NEEDS_WEIGHTS",
    "COST_NEEDS_A_PRICE",
    "CRON_PATTERN",
    "SAMPLE_NEEDS_SAMPLING",
    "URI_PATTERN",
    "Accuracy",
    "Analysis",
    "Autoscaling",
    "Backend",
    "Batching",
    "BuildSpec",
    "Calibration",
    "CalibrationMethod",
    "Cost",
    "CpuMemory",
    "Cron",
    "Dim",
    "Dims",
    "Experiment",
    "GatewayAPIRouter",
    "HardSlo",
    "IstioRouter",
    "Judge",
    "ModelSource",
    "Name",
    "OutputAgreement",
    "Precision",
    "Profile",
    "PrometheusSource",
    "Quantity",
    "RecommendRule",
    "RegressionGate",
    "ReplicasRouter",
    "Resources",
    "RolloutSpec",
    "SampleSourced",
    "Sampling",
    "SecretName",
    "ServingSpec",
    "Sha256",
    "Shadow",
    "Slo",
    "SpecModel",
    "Step",
    "StorageSpec",
    "TaintKey",
    "TaintValue",
    "Target",
    "Toleration",
    "Tolerations",
    "TrafficRouter",
    "TrtEngineSpec",
    "Uri",
    "Validation",
    "Variant",
    "next_fire",
]
