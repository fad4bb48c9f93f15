"""Leader election on a real Lease (the local API server): one leader at a time, a clean
hand-over on release, a takeover within ``lease duration + retry`` when the leader dies, and a
leader that stops counting itself one when it cannot renew."""

from __future__ import annotations

import time
from typing import Any

import pytest
from trtops_operator.leader import Elector, LeaderConfig

pytestmark = pytest.mark.cluster

# Short periods keep the test quick; the ratios are client-go's (15 / 10 / 2).
DURATION, DEADLINE, RETRY = 3.0, 2.0, 0.4


def _elector(k8s_api: Any, namespace: str, identity: str) -> Elector:
    config = LeaderConfig(
        enabled=True,
        namespace=namespace,
        name="trtops-operator",
        identity=identity,
        lease_duration_s=DURATION,
        renew_deadline_s=DEADLINE,
        retry_s=RETRY,
    )
    return Elector(config, k8s_api)


def _campaign(
    electors: list[Elector], seconds: float, skip: set[str] = frozenset()
) -> list[set[str]]:
    """Every elector tries once per RETRY for ``seconds`` (except those in ``skip``, as if
    dead); returns who counted itself the leader after each round."""
    rounds = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for e in electors:
            if e.config.identity not in skip:
                e.try_acquire_or_renew()
        rounds.append({e.config.identity for e in electors if e.leading})
        time.sleep(RETRY)
    return rounds


def test_one_leader_then_takeover_after_the_leader_dies(k8s_api: Any, namespace: str) -> None:
    a, b = _elector(k8s_api, namespace, "a"), _elector(k8s_api, namespace, "b")
    rounds = _campaign([a, b], 2 * DURATION)
    assert all(len(r) == 1 for r in rounds), rounds  # never two, never none
    assert {x for r in rounds for x in r} == {"a"}  # the first one keeps it
    # "a" dies (stops renewing): "b" waits the lease out, then takes over.
    died = time.monotonic()
    took_over = None
    while took_over is None:
        b.try_acquire_or_renew()
        assert not (a.leading and b.leading)
        if b.leading:
            took_over = time.monotonic() - died
        assert time.monotonic() - died < DURATION + 3 * RETRY + 2, "no takeover"
        time.sleep(RETRY)
    assert DEADLINE <= took_over <= DURATION + 2 * RETRY + 1  # not before "a" stopped counting
    assert not a.leading
    # "a" comes back: it follows now.
    assert not a.try_acquire_or_renew()
    from kubernetes import client

    lease = client.CoordinationV1Api(k8s_api).read_namespaced_lease("trtops-operator", namespace)
    assert (lease.spec.holder_identity, lease.spec.lease_transitions) == ("b", 1)


def test_release_hands_over_at_the_next_try(k8s_api: Any, namespace: str) -> None:
    a, b = _elector(k8s_api, namespace, "a"), _elector(k8s_api, namespace, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.leading
    assert b.try_acquire_or_renew()  # no waiting out the lease
    assert not a.try_acquire_or_renew()


def test_a_leader_that_cannot_renew_stops_leading_before_anyone_may_take_over(
    k8s_api: Any, namespace: str
) -> None:
    a = _elector(k8s_api, namespace, "a")
    assert a.try_acquire_or_renew()
    assert a.leading
    time.sleep(DEADLINE + 0.1)  # renewals fail (API down): no more writes from "a"
    assert not a.leading
    assert DEADLINE < DURATION  # ... well before a follower would take the Lease
