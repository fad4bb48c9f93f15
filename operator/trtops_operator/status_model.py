"""Typed ``TrtEngine`` status and the one parse of a resource body.

A kopf body is parsed once per reconcile into an :class:`EngineView` (metadata, and status as
:class:`EngineStatus`); the reconcile steps read typed fields and write a new ``EngineStatus``,
which becomes a merge patch only at the edge (:meth:`EngineStatus.to_json`). Field names and
bounds follow the CRD's ``status`` schema. ``canary`` stays the JSON the canary package reads
(``trtops_operator.canary.state.CanaryState.from_json``): that package types it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

__all__ = [
    "CONDITION_TYPES",
    "STATUS_KEYS",
    "Condition",
    "EngineStatus",
    "EngineView",
    "PlanRecord",
    "StableStatus",
]

CONDITION_TYPES = ("Built", "Ready", "Progressing", "Degraded", "RolledBack")
STATUS_KEYS = (
    "observedGeneration",
    "revision",
    "conditions",
    "plans",
    "stable",
    "canary",
    "lastGoodRevision",
    "experiment",
)
MESSAGE_MAX = 4096
STABLE_PLAN_FIELDS = ("target", "key", "job", "path", "precision", "backend")


class _Status(BaseModel):
    # Status is written by this operator but readable by anyone with RBAC to patch it: parse
    # leniently (unknown fields kept) so a hand edit cannot wedge the reconcile.
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)


class Condition(_Status):
    """A Kubernetes API convention condition (``metav1.Condition``'s fields)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: Annotated[str, Field(max_length=MESSAGE_MAX)] = ""
    last_transition_time: str = ""
    observed_generation: int = 0


class PlanRecord(_Status):
    """One built plan in ``status.plans``: the operator's identity fields, then the worker's
    result fields as the worker reported them (``trtops_worker.contract.BuildSuccessResult``)."""

    target: str = ""  # gpuProduct, or "cpu"
    key: str = ""  # build identity derived from the spec (``keys.build_key``)
    job: str = ""  # the build Job
    path: str = ""  # the artifact folder on the storage claim
    precision: str | None = None
    backend: str | None = None
    reused: bool | None = None  # recorded from another engine's Job

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def identity(self) -> PlanRecord:
        """Only what names the plan and how it serves (what ``stable``/``canary`` keep)."""
        return PlanRecord.model_validate(
            {k: v for k, v in self.to_json().items() if k in STABLE_PLAN_FIELDS}
        )


class StableStatus(_Status):
    """The revision serving the stable share of traffic."""

    revision: str = ""
    weight: Annotated[int, Field(ge=0, le=100)] = 100
    plans: list[PlanRecord] = []


class EngineStatus(_Status):
    observed_generation: int | None = None
    revision: str | None = None
    conditions: list[Condition] = []
    plans: list[PlanRecord] = []
    stable: StableStatus | None = None
    canary: dict[str, Any] | None = None
    last_good_revision: str | None = None
    # spec.experiment's state and results (trtops_operator.experiment.step), kept as JSON.
    experiment: dict[str, Any] | None = None
    # GPU product -> compute capability its plans are pinned to (``compat.decide_pins``).
    compute_capability_pins: dict[str, str] | None = None
    # Scheduled rebuilds (``rebuild.RebuildStatus``); typed there.
    rebuild: dict[str, Any] | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_json(self) -> dict[str, Any]:
        """The status fields that are set, as the CRD spells them."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> EngineStatus:
        """Read a status; a field that does not parse is read as absent rather than failing
        the whole reconcile (the operator rewrites it)."""
        raw = dict(raw or {})
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            return cls.model_validate({k: v for k, v in raw.items() if k not in bad})


class EngineView(BaseModel):
    """A ``TrtEngine`` body as the reconcile reads it (spec parsed separately: an invalid spec
    is a status to report, not an exception)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    namespace: str
    uid: str
    generation: int
    annotations: dict[str, str]
    spec: dict[str, Any]
    status: EngineStatus
    raw_status: dict[str, Any]  # as read: what a new status is compared with

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> EngineView:
        meta = body["metadata"]
        raw = dict(body.get("status") or {})
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            annotations=dict(meta.get("annotations") or {}),
            spec=dict(body.get("spec") or {}),
            status=EngineStatus.parse(raw),
            raw_status=raw,
        )
