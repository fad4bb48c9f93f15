"""The routing step, pure: the engine's Service (pinned to the stable revision when a weighted
router splits traffic), the canary's Service, the route weights, and a PodDisruptionBudget when
there is more than one replica."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trtops_operator import manifests
from trtops_operator.canary import routers as canary_routers
from trtops_operator.decision import RouterAction
from trtops_operator.serving import Serving, apply_if_changed

__all__ = ["Routing", "decide_routing"]


@dataclass
class Routing:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    router: RouterAction | None = None


def decide_routing(engine: manifests.Engine, revision: str, serving: Serving) -> Routing:
    """One Service per engine (Gateway API and Istio weigh a stable-pinned one against the
    canary's), the route weights, and a PDB when there is more than one replica."""
    spec, observed, out = engine.spec, serving.observed, Routing()
    kind = canary_routers.router_kind(spec.rollout.traffic_router) if spec.rollout else None
    canary_svc = f"{engine.name}-canary"
    if serving.wanted:
        pinned = kind in ("gatewayAPI", "istio")
        main = manifests.render_service(
            engine, revision=(serving.stable_revision or revision) if pinned else None
        )
        services = [main]
        # the shadow's address (manifests.shadow_url) too, whatever the router
        shadow = (
            spec.rollout is not None
            and spec.rollout.analysis is not None
            and (spec.rollout.analysis.shadow is not None)
        )
        with_canary_svc = (pinned or shadow) and serving.in_canary
        if with_canary_svc:
            services.append(manifests.render_service(engine, revision=revision, name=canary_svc))
        for svc in services:
            apply_if_changed(out.apply, svc, observed.services.get(svc["metadata"]["name"]))
        if canary_svc in observed.services and not with_canary_svc:
            out.delete.append(("Service", canary_svc))
        if pinned and spec.rollout is not None:
            router = spec.rollout.traffic_router
            desired = {engine.name: 100 - serving.canary_weight}
            if serving.in_canary:
                desired[canary_svc] = serving.canary_weight
            out.router = RouterAction(
                kind=str(kind),
                name=router.gateway_api.http_route
                if router.gateway_api
                else (router.istio.virtual_service if router.istio else ""),
                routes=tuple(router.istio.routes) if router.istio else (),
                desired=desired,
                owned=(engine.name, canary_svc),
            )
        if serving.replicas > 1:
            apply_if_changed(
                out.apply, manifests.render_pdb(engine), observed.pdbs.get(engine.name)
            )
        policy = manifests.render_network_policy(engine)
        apply_if_changed(out.apply, policy, observed.network_policies.get(engine.name))
    if engine.name in observed.pdbs and not (serving.wanted and serving.replicas > 1):
        out.delete.append(("PodDisruptionBudget", engine.name))
    return out
