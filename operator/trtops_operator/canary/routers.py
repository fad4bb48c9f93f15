"""Traffic routers, pure: canary replica counts and minimal JSON patches for route objects.

The route objects (Gateway API ``HTTPRoute``, Istio ``VirtualService``) belong to the user or to
Argo CD. The operator owns only the backend references that name one of *its* Services (the
caller passes their names) and only their ``weight``: a foreign backend, a filter, a match, a
timeout or another rule is never rewritten. Changes are expressed as a JSON patch of exactly
the weights (and the added or removed owned references) that differ, so
:mod:`trtops_operator.k8s` can guard it with the ``resourceVersion`` it read.

Weights are percentages from the state machine (canary ``w``, stable ``100 - w``). Inside one
rule they are rescaled to the total the owned references carry, so that a foreign backend in the
same rule keeps its share: with no foreign backend (or only weight-0 ones) the total is 100; in
a Gateway API rule with weighted foreign backends it is the current sum of the owned weights (an
absent weight is 1, the Gateway API default: give the stable reference weight 100 in such rules,
or the split is coarse); in Istio it is 100 minus the foreign weights (Istio wants each route to
sum to 100).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

from trtops_operator.canary.errors import RouterMisconfigured
from trtops_operator.models import TrafficRouter

__all__ = [
    "RouterKind",
    "canary_replicas",
    "effective_weight",
    "httproute_patch",
    "httproute_release_patch",
    "httproute_weights",
    "router_kind",
    "split",
    "virtualservice_patch",
    "virtualservice_release_patch",
    "virtualservice_weights",
]

RouterKind = Literal["gatewayAPI", "replicas", "istio"]
JsonPatch = list[dict[str, Any]]


def router_kind(router: TrafficRouter) -> RouterKind:
    if router.gateway_api is not None:
        return "gatewayAPI"
    if router.istio is not None:
        return "istio"
    return "replicas"


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def canary_replicas(kind: RouterKind, stable_replicas: int, weight: int) -> int:
    """Canary pods for ``weight`` percent while stable keeps all ``stable_replicas``.

    Weighted routers (Gateway API, Istio): enough pods for the share, ``ceil(S * w / 100)``, at
    least 1 (the canary keeps a warm pod even at weight 0 until it is rolled back).
    ``replicas`` router (one Service over both revisions, no mesh): traffic follows pod counts, so
    ``c / (S + c) ~= w / 100`` gives ``c = round_half_up(S * w / (100 - w))``, at least 1 when
    ``w > 0`` (the smallest canary the Service can express, which may be well above ``w``), 0 at
    ``w == 0``, and at most ``S``: stable never shrinks during a canary and the canary never
    outgrows it, so this router tops out at 50 % until promotion swaps the revisions.
    :func:`effective_weight` reports the share that results.
    """
    s = max(int(stable_replicas), 0)
    w = min(max(int(weight), 0), 100)
    if kind != "replicas":
        return max(1, math.ceil(s * w / 100))
    if w == 0:
        return 0
    if w == 100:
        return max(s, 1)
    return min(max(1, _round_half_up(s * w / (100 - w))), max(s, 1))


def effective_weight(kind: RouterKind, stable_replicas: int, weight: int) -> float:
    """The canary share of traffic in percent that the router really gives for ``weight``."""
    if kind != "replicas":
        return float(min(max(weight, 0), 100))
    c = canary_replicas(kind, stable_replicas, weight)
    total = c + max(stable_replicas, 0)
    return 100.0 * c / total if total else 0.0


def split(total: int, percents: Mapping[str, int]) -> dict[str, int]:
    """Integer weights summing to ``total`` in the given proportions (largest remainder; ties
    go to the name that sorts first, so the result is deterministic)."""
    pct_sum = sum(percents.values())
    if total <= 0 or pct_sum <= 0:
        return dict.fromkeys(percents, 0)
    exact = {k: total * v / pct_sum for k, v in percents.items()}
    out = {k: math.floor(x) for k, x in exact.items()}
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


# --- shared rule walking --------------------------------------------------------------------


def _rule_patch(
    base: str,
    refs: Sequence[Mapping[str, Any]],
    owned_name: Any,
    desired: Mapping[str, int],
    *,
    total: int,
    current_weight: Any,
    new_ref: Any,
) -> JsonPatch:
    """Ops for one rule: ``owned_name(ref)`` is the owned Service name or None for a foreign
    ref; replaces first (original indices), then removals from the end, then appends."""
    target = split(total, desired)
    replaces: JsonPatch = []
    removes: list[int] = []
    seen: set[str] = set()
    template: Mapping[str, Any] | None = None
    for j, ref in enumerate(refs):
        name = owned_name(ref)
        if name is None:
            continue
        template = template or ref
        if name not in target or name in seen:
            removes.append(j)
            continue
        seen.add(name)
        if current_weight(ref) != target[name] or "weight" not in ref:
            op = "replace" if "weight" in ref else "add"
            replaces.append({"op": op, "path": f"{base}/{j}/weight", "value": target[name]})
    ops = replaces + [
        {"op": "remove", "path": f"{base}/{j}"} for j in sorted(removes, reverse=True)
    ]
    assert template is not None  # only rules with an owned ref are patched
    for name in desired:
        if name not in seen and target[name] > 0:
            ops.append(
                {"op": "add", "path": f"{base}/-", "value": new_ref(template, name, target[name])}
            )
    return ops


# --- Gateway API HTTPRoute ------------------------------------------------------------------


def _gw_owned(namespace: str, owned: Collection[str]) -> Any:
    def name_of(ref: Mapping[str, Any]) -> str | None:
        if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
            return None
        if ref.get("namespace", namespace) != namespace:
            return None
        name = ref.get("name")
        return name if isinstance(name, str) and name in owned else None

    return name_of


def _gw_weight(ref: Mapping[str, Any]) -> int:
    return int(ref.get("weight", 1))


def _gw_new_ref(template: Mapping[str, Any], name: str, weight: int) -> dict[str, Any]:
    ref = {k: template[k] for k in ("group", "kind", "namespace", "port") if k in template}
    return {**ref, "name": name, "weight": weight}


def httproute_weights(route: Mapping[str, Any], owned: Collection[str]) -> list[dict[str, int]]:
    """Per rule that references an owned Service: owned Service name -> weight (for status)."""
    ns = route["metadata"]["namespace"]
    name_of = _gw_owned(ns, owned)
    out = []
    for rule in route.get("spec", {}).get("rules") or []:
        mine = {n: _gw_weight(r) for r in rule.get("backendRefs") or [] if (n := name_of(r))}
        if mine:
            out.append(mine)
    return out


def httproute_patch(
    route: Mapping[str, Any], desired: Mapping[str, int], owned: Collection[str]
) -> JsonPatch:
    """The minimal JSON patch that gives the owned backendRefs of ``route`` the ``desired``
    percentages (Service name -> percent). Only rules that already reference an owned Service
    change; owned refs not in ``desired`` go away; a desired Service missing from such a rule
    is appended with the first owned ref's ``port``. Empty list: nothing to change.

    Raises :class:`RouterMisconfigured` when no rule references an owned Service.
    """
    meta = route["metadata"]
    name_of = _gw_owned(meta["namespace"], owned)
    ops: JsonPatch = []
    managed = 0
    for i, rule in enumerate(route.get("spec", {}).get("rules") or []):
        refs = rule.get("backendRefs") or []
        owned_refs = [r for r in refs if name_of(r)]
        if not owned_refs:
            continue
        managed += 1
        foreign = sum(_gw_weight(r) for r in refs if not name_of(r))
        total = sum(_gw_weight(r) for r in owned_refs) if foreign else 100
        ops += _rule_patch(
            f"/spec/rules/{i}/backendRefs",
            refs,
            name_of,
            desired,
            total=total,
            current_weight=_gw_weight,
            new_ref=_gw_new_ref,
        )
    if not managed:
        raise RouterMisconfigured(
            f"HTTPRoute {meta['name']} has no rule with a backendRef to any of the Services "
            f"{sorted(owned)}: add one to the stable Service in the rule(s) the canary should share"
        )
    return ops


def httproute_release_patch(
    route: Mapping[str, Any], main: str, owned: Collection[str]
) -> JsonPatch:
    """The JSON patch that takes a deleted engine's backendRefs out of ``route``: in a rule that
    keeps another backend, every owned ref goes (the others keep their weights, which Gateway
    API reads as proportions); in a rule made only of owned refs, the ``main`` one stays, alone,
    at weight 100, as the user wrote the rule before any canary (an empty rule would answer 500
    just the same, and the user's rule keeps its shape). Rules without owned refs, matches and
    filters are never touched. Empty list: nothing to change."""
    name_of = _gw_owned(route["metadata"]["namespace"], owned)
    ops: JsonPatch = []
    for i, rule in enumerate(route.get("spec", {}).get("rules") or []):
        refs = rule.get("backendRefs") or []
        owned_refs = [r for r in refs if name_of(r)]
        if not owned_refs:
            continue
        alone = len(owned_refs) == len(refs)
        ops += _rule_patch(
            f"/spec/rules/{i}/backendRefs",
            refs,
            name_of,
            {main: 100} if alone else {},
            total=100,
            current_weight=_gw_weight,
            new_ref=_gw_new_ref,
        )
    return ops


# --- Istio VirtualService -------------------------------------------------------------------


def _istio_service(host: str, namespace: str) -> str | None:
    """``svc``, ``svc.ns``, ``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` name ``svc``."""
    parts = host.split(".")
    if len(parts) > 1 and parts[1] != namespace:
        return None
    return parts[0]


def _istio_owned(namespace: str, owned: Collection[str]) -> Any:
    def name_of(ref: Mapping[str, Any]) -> str | None:
        host = (ref.get("destination") or {}).get("host")
        if not isinstance(host, str):
            return None
        name = _istio_service(host, namespace)
        return name if name in owned else None

    return name_of


def _istio_new_ref(template: Mapping[str, Any], name: str, weight: int) -> dict[str, Any]:
    dest = template.get("destination") or {}
    host = str(dest.get("host", name))
    suffix = host.split(".", 1)[1] if "." in host else ""
    new_dest: dict[str, Any] = {"host": f"{name}.{suffix}" if suffix else name}
    if "port" in dest:
        new_dest["port"] = dest["port"]
    return {"destination": new_dest, "weight": weight}


def _istio_rules(
    vs: Mapping[str, Any], routes: Collection[str]
) -> list[tuple[int, Mapping[str, Any]]]:
    http = list(enumerate((vs.get("spec") or {}).get("http") or []))
    if not routes:
        return http
    names = {r.get("name") for _, r in http}
    missing = sorted(set(routes) - names)
    if missing:
        raise RouterMisconfigured(
            f"VirtualService {vs['metadata']['name']} has no http route named {missing}"
        )
    return [(i, r) for i, r in http if r.get("name") in routes]


def virtualservice_weights(
    vs: Mapping[str, Any], owned: Collection[str], routes: Collection[str] = ()
) -> list[dict[str, int]]:
    ns = vs["metadata"]["namespace"]
    name_of = _istio_owned(ns, owned)
    out = []
    for _, rule in _istio_rules(vs, routes):
        dests = rule.get("route") or []
        mine = {
            n: int(d.get("weight", 100 if len(dests) == 1 else 0))
            for d in dests
            if (n := name_of(d))
        }
        if mine:
            out.append(mine)
    return out


def virtualservice_patch(
    vs: Mapping[str, Any],
    desired: Mapping[str, int],
    owned: Collection[str],
    routes: Collection[str] = (),
) -> JsonPatch:
    """Like :func:`httproute_patch` for ``spec.http[].route[]`` (optionally only the http routes
    named in ``routes``); destinations are matched on ``destination.host``."""
    meta = vs["metadata"]
    name_of = _istio_owned(meta["namespace"], owned)
    ops: JsonPatch = []
    managed = 0
    for i, rule in _istio_rules(vs, routes):
        dests = rule.get("route") or []
        if not any(name_of(d) for d in dests):
            continue
        managed += 1
        foreign = sum(int(d.get("weight", 0)) for d in dests if not name_of(d))
        single = len(dests) == 1

        def weight(d: Mapping[str, Any], single: bool = single) -> int:
            return int(d.get("weight", 100 if single else 0))

        ops += _rule_patch(
            f"/spec/http/{i}/route",
            dests,
            name_of,
            desired,
            total=max(100 - foreign, 0),
            current_weight=weight,
            new_ref=_istio_new_ref,
        )
    if not managed:
        raise RouterMisconfigured(
            f"VirtualService {meta['name']} has no http route with a destination host among "
            f"{sorted(owned)}: add the stable Service as a destination"
        )
    return ops


def virtualservice_release_patch(
    vs: Mapping[str, Any], main: str, owned: Collection[str], routes: Collection[str] = ()
) -> JsonPatch:
    """The JSON patch that takes a deleted engine's canary destination out of ``vs``: the
    ``main`` destination keeps the whole owned share (Istio wants each route's weights to sum
    to 100 and refuses an empty route, so the user's destination stays as they wrote it)."""
    try:
        return virtualservice_patch(vs, {main: 100}, owned, routes)
    except RouterMisconfigured:
        return []  # nothing of ours is left in it
