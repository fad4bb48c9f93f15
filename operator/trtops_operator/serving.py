"""The serving step, pure: which revisions run with how many pods, the canary's turn, and when
the stable revision moves.

During a canary the stable side keeps its full replica count; the canary's replicas follow its
weight (``canary.routers.canary_replicas``). With ``spec.serving.autoscaling`` those counts are
floors of each revision's HorizontalPodAutoscaler instead (the Deployments carry no replicas):
the canary's HPA keeps at least its share of the stable pods, and all of them before promotion,
so a promotion never moves traffic onto fewer pods; afterwards the floor drops back to
``minReplicas`` and the HPA scales down at its own slow pace.

The stable revision moves at once for the first revision, for a plain rollout once the new pods
are available, and after a canary only when the canary machine promotes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trtops_operator import keys, manifests, rollout
from trtops_operator.builds import Builds
from trtops_operator.canary.analysis import Verdict
from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec
from trtops_operator.observation import Observed
from trtops_operator.status_model import EngineView, PlanRecord, StableStatus

__all__ = ["Serving", "apply_if_changed", "decide_serving", "plan_ref"]


def apply_if_changed(apply: list[dict[str, Any]], obj: dict[str, Any], have: str | None) -> None:
    """Apply ``obj`` unless what exists carries its hash already (a steady state writes nothing)."""
    if have != manifests.stamped_hash(obj):
        apply.append(obj)


@dataclass
class Serving:
    """Which Deployments should run, where the traffic is, and what to apply or delete."""

    observed: Observed
    replicas: int
    wanted: dict[str, dict[str, Any]] = field(default_factory=dict)
    hpas: dict[str, dict[str, Any]] = field(default_factory=dict)  # by Deployment name
    names_by_rev: dict[str, list[str]] = field(default_factory=dict)
    stable: StableStatus | None = None
    canary: rollout.CanaryTurn | None = None
    canary_mode: bool = False
    promoted: bool = False
    canary_weight: int = 0
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stable_revision(self) -> str | None:
        return (self.stable.revision or None) if self.stable is not None else None

    @property
    def in_canary(self) -> bool:
        return self.canary_mode and not self.promoted

    def rolled_out(self, rev: str) -> bool:
        names = self.names_by_rev.get(rev) or []
        return bool(names) and all(
            (d := self.observed.deployments.get(n)) is not None
            and d.spec_hash == manifests.stamped_hash(self.wanted[n])
            and d.rolled_out
            for n in names
        )

    def counts(self, rev: str | None) -> tuple[int, int]:
        """(available, desired) serving pods of revision ``rev``, over its Deployments."""
        names = self.names_by_rev.get(rev or "") or []
        available = sum(
            min(d.available, self.replicas)
            for n in names
            if (d := self.observed.deployments.get(n)) is not None
        )
        return available, self.replicas * len(names)


def plan_ref(
    spec: TrtEngineSpec, plan: PlanRecord, pins: Mapping[str, str] | None
) -> manifests.PlanRef:
    """How a recorded plan is served: on its GPU product (``None``: ONNX Runtime on CPU), with
    the product's compute-capability pin, if any."""
    cpu = plan.target == keys.CPU_TARGET and spec.serving.backend == "onnxruntime"
    product = None if cpu else plan.target
    return manifests.PlanRef(
        target=product,
        key=plan.key,
        path=plan.path,
        precision=str(plan.precision or spec.build.precision),
        backend=str(plan.backend or spec.serving.backend),
        compute_capability=(pins or {}).get(product) if product else None,
    )


def decide_serving(
    view: EngineView,
    engine: manifests.Engine,
    builds: Builds,
    observed: Observed,
    config: OperatorConfig,
    now: str,
    verdict: Verdict | None,
    pins: Mapping[str, str] | None = None,
) -> Serving:
    """Which revisions run with how many pods, the canary's turn, and when stable moves.
    ``pins``: GPU product -> compute capability its pods must run on (``compat``)."""
    spec = engine.spec
    revision = builds.revision
    auto = spec.serving.autoscaling
    serving = Serving(observed, spec.serving.replicas if auto is None else auto.min_replicas)
    old = view.status.stable
    serving.stable = old.model_copy(deep=True) if old is not None and old.revision else None
    stable_rev = serving.stable_revision
    serving.canary_mode = (
        bool(stable_rev) and stable_rev != revision and builds.ready and spec.rollout is not None
    )
    if serving.canary_mode and stable_rev is not None:
        serving.canary = rollout.canary_turn(
            spec,
            view,
            revision=revision,
            stable_revision=stable_rev,
            now=now,
            observed=observed,
            verdict=verdict,
        )
    cd = serving.canary
    serving.promoted = cd is not None and cd.state.phase == "Promoted"

    # (revision, plans, replicas); the stable side keeps its full count for the whole canary.
    # With autoscaling the count is the HPA's floor (0: the spec's minReplicas).
    runs: list[tuple[str, Sequence[PlanRecord], int]] = []
    if stable_rev and stable_rev != revision and serving.stable is not None:
        runs.append((stable_rev, serving.stable.plans, 0 if auto else serving.replicas))
    if builds.ready:
        count = cd.canary_replicas if cd is not None else (0 if auto else serving.replicas)
        if not (auto and cd is not None and count == 0):  # a rolled-back canary: no pods
            runs.append((revision, builds.plans, count))
    for rev, rev_plans, rev_replicas in runs:
        for p in rev_plans:
            ref = plan_ref(spec, p, pins)
            name = keys.serving_name(f"{engine.name}-{rev}", ref.target)
            serving.wanted[name] = manifests.render_deployment(
                engine, ref, name=name, revision=rev, config=config, replicas=rev_replicas
            )
            if auto is not None:
                serving.hpas[name] = manifests.render_hpa(
                    engine, name=name, revision=rev, floor=rev_replicas
                )
            serving.names_by_rev.setdefault(rev, []).append(name)

    for name, obj in serving.wanted.items():
        have = observed.deployments.get(name)
        apply_if_changed(serving.apply, obj, have.spec_hash if have is not None else None)
    for name, obj in serving.hpas.items():
        apply_if_changed(serving.apply, obj, observed.hpas.get(name))
    serving.delete += [("Deployment", n) for n in observed.deployments if n not in serving.wanted]
    serving.delete += [
        ("HorizontalPodAutoscaler", n) for n in observed.hpas if n not in serving.hpas
    ]

    plain = not serving.canary_mode and (revision == stable_rev or serving.rolled_out(revision))
    if builds.ready and (plain or serving.promoted):
        serving.stable = StableStatus(
            revision=revision, weight=100, plans=[p.identity() for p in builds.plans]
        )
    serving.canary_weight = cd.canary_weight if cd is not None and not serving.promoted else 0
    if serving.stable is not None:
        serving.stable.weight = 100 - serving.canary_weight
    return serving
