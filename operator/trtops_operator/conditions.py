"""The condition machinery, pure: set a condition, turn a new status into a patch and its
transition Events, fold those Events, and the two statuses that replace a normal one (an invalid
spec; an object the API server refused).

Conditions follow the Kubernetes API conventions (``metav1.Condition``): ``lastTransitionTime``
moves only when ``status`` does; a transition to a bad state is a Warning Event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from trtops_operator.decision import Decision, Event
from trtops_operator.status_model import (
    MESSAGE_MAX,
    STATUS_KEYS,
    Condition,
    EngineStatus,
    EngineView,
)

__all__ = [
    "PROGRESS_REASONS",
    "changes",
    "finish_status",
    "fold_transitions",
    "invalid",
    "merge_patched",
    "refused",
    "route_unusable",
    "set_condition",
]

# Reasons that are part of normal progress: their transitions are Normal events, not Warnings.
PROGRESS_REASONS = {
    "Building",
    "RollingOut",
    "Starting",
    "Built",
    "Serving",
    "RolloutComplete",
    "AsExpected",
    "Pending",
}
ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(
    old: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
) -> Condition:
    """A condition; ``lastTransitionTime`` moves only when ``status`` does."""
    prev = next((c for c in old if c.type == type_), None)
    changed = prev is None or prev.status != status
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:MESSAGE_MAX],
        last_transition_time=now if changed or prev is None else prev.last_transition_time or now,
        observed_generation=generation,
    )


def _bad(cond: Condition) -> bool:
    return cond.reason not in PROGRESS_REASONS and (
        (cond.type == "Degraded" and cond.status == "True")
        or (cond.type in ("Built", "Ready") and cond.status == "False")
    )


def merge_patched(target: Any, patch: Any) -> Any:
    """``target`` after the JSON merge patch ``patch`` (RFC 7396): a null removes its key, an
    object merges, anything else replaces. Compared with ``target`` it says whether a status
    patch would change anything (a null for a key that is absent changes nothing)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patched(result.get(key), value)
    return result


def changes(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether merge patch ``patch`` changes ``status`` as the API server stores it (it keeps
    no nulls): a status write only when what is stored would differ, not on every request."""
    stored = merge_patched({}, status)
    return bool(merge_patched(stored, patch) != stored)


def finish_status(
    decision: Decision, view: EngineView, status: EngineStatus, *, partial: bool = False
) -> None:
    """Set ``decision.status`` to the merge patch for ``status`` when it differs from what is
    there (a steady state writes nothing), and add one Event per condition transition.
    ``partial``: leave the fields ``status`` does not set as they are."""
    new = status.to_json()
    old = view.raw_status
    # Merge patches drop keys that are absent; null them explicitly to clear old values.
    patch = new if partial else {**dict.fromkeys(STATUS_KEYS), **new}
    if changes(old, patch):
        decision.status = patch
    for cond in status.conditions:
        prev = view.status.condition(cond.type)
        if prev is not None and (prev.status, prev.reason) == (cond.status, cond.reason):
            continue
        decision.events.append(
            Event(
                "Warning" if _bad(cond) else "Normal",
                cond.reason,
                f"{cond.type}={cond.status}: {cond.message}".rstrip(": "),
                transition=True,
            )
        )


def invalid(view: EngineView, message: str, now: str) -> Decision:
    """The decision for a spec the operator cannot use: say so, touch nothing."""
    old = view.status.conditions
    g = view.generation
    status = EngineStatus(
        observed_generation=g,
        conditions=[
            set_condition(old, "Ready", "False", "InvalidSpec", message, generation=g, now=now),
            set_condition(old, "Degraded", "True", "InvalidSpec", message, generation=g, now=now),
        ],
    )
    decision = Decision(invalid=message)
    finish_status(decision, view, status, partial=True)  # what else is there stays readable
    return decision


def refused(
    view: EngineView,
    patch: Mapping[str, Any] | None,
    message: str,
    now: str,
    *,
    reason: str = "ApplyRefused",
) -> tuple[dict[str, Any] | None, Event | None]:
    """What to report when an object this reconcile built could not be written (the API server
    refused it: ``ApplyRefused``; its name is someone else's object: ``NameConflict``): the
    status patch that was about to be written (or the current status) with ``Degraded=True/
    <reason>`` (None: status says all that already), and a Warning unless the same refusal is
    already reported."""
    base = dict(patch if patch is not None else view.raw_status)
    degraded = set_condition(
        view.status.conditions,
        "Degraded",
        "True",
        reason,
        message,
        generation=view.generation,
        now=now,
    )
    conds = []
    for c in base.get("conditions") or []:
        stalled = c.get("type") == "Progressing" and c.get("status") == "True"
        if stalled or (c.get("type") in ("Built", "Ready") and c.get("status") == "False"):
            # What keeps it from building or serving is this refusal: say so where users look
            # (nothing progresses until it is lifted).
            c = set_condition(
                view.status.conditions,
                c["type"],
                "False",
                reason,
                message,
                generation=view.generation,
                now=now,
            ).model_dump(mode="json", by_alias=True)
        if c.get("type") != "Degraded":
            conds.append(c)
    base["conditions"] = [*conds, degraded.model_dump(mode="json", by_alias=True)]
    prev = view.status.condition("Degraded")
    same = prev is not None and (prev.reason, prev.message) == (reason, degraded.message)
    patch_ = base if changes(view.raw_status, base) else None
    return patch_, None if same else Event("Warning", reason, message)


def route_unusable(
    view: EngineView, patch: Mapping[str, Any] | None, message: str, now: str
) -> tuple[dict[str, Any] | None, Event | None]:
    """:func:`refused` for a route object the operator may not or cannot move
    (``RouterMisconfigured``), with what the route really carries: the operator set nothing on
    it, so a canary in flight has weight 0 there (stable 100), whatever its step says
    (``setWeight``), and Ready's message says so."""
    base = dict(patch if patch is not None else view.raw_status)
    canary = base.get("canary") or {}
    if canary.get("revision") and canary.get("phase") in ("Progressing", "Promoting"):
        base["canary"] = {**canary, "weight": 0}
        if base.get("stable"):
            base["stable"] = {**base["stable"], "weight": 100}
        conds = []
        for c in base.get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                serving = str(c.get("message", "")).split("; canary ", 1)[0]
                text = f"{serving}; canary {canary['revision']} at 0%: the route is unusable"
                c = {**c, "message": f"{text} (RouterMisconfigured, see Degraded)"}
            conds.append(c)
        base["conditions"] = conds
    return refused(view, base, message, now, reason="RouterMisconfigured")


def fold_transitions(events: Sequence[Event]) -> list[Event]:
    """One Event per type and reconcile: every condition transition is still told, but inside the
    first explicit Event of its type (or one Event led by the first transition) rather than one
    API write each, which was most of the operator's writes at scale. Normal transitions with
    only a Warning to join go into it: a rollback's ``Progressing=False; RolledBack=True`` is
    told in its ``RolledBack`` Warning, not in a second Event of the same reason."""
    out = [e for e in events if not e.transition]
    for type_ in ("Warning", "Normal"):
        told = "; ".join(e.message for e in events if e.transition and e.type == type_)
        if not told:
            continue
        lead = next((i for i, e in enumerate(out) if e.type == type_), None)
        if lead is None and type_ == "Normal":  # never the other way: a Warning stays one
            lead = next((i for i, e in enumerate(out) if e.type == "Warning"), None)
        if lead is None:
            first = next(e for e in events if e.transition and e.type == type_)
            out.append(Event(type_, first.reason, told))
        else:
            e = out[lead]
            out[lead] = Event(e.type, e.reason, f"{e.message}; {told}", job=e.job, folded=True)
    return out
