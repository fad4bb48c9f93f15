"""Shadow traffic: the comparison, the sender's bounds, and two real serve processes.

The unit tests drive :class:`ShadowSender` with an in-process ``send`` coroutine (a stand-in for
the candidate, so a candidate that never answers can be made); the last test runs a real stable
and a real candidate ``trtops-worker serve`` on ONNX Runtime, the candidate a model that answers
differently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry
from trtops_worker import samples
from trtops_worker.serve.shadow import Mismatch, ShadowMetrics, ShadowSender, compare

from tests.serve.conftest import conv_input, infer_body
from tests.support.worker import start_server


def test_identical_outputs_agree_fully() -> None:
    x = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    a = compare({"logits": x}, {"logits": x.copy()})["logits"]
    assert a.cosines == pytest.approx((1.0,) * 4)
    assert (a.top1_compared, a.top1_agreed, a.max_abs_error) == (4, 4, 0.0)


def test_disagreement_shows_in_each_measure() -> None:
    stable = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)
    candidate = np.array([[0.9, 0.1, 0.0], [1.6, 0.2, 0.2]], dtype=np.float32)  # row 2 scaled x2
    a = compare({"p": stable}, {"p": candidate})["p"]
    assert a.cosines[0] < 0.3  # another class wins: far apart
    assert a.cosines[1] == pytest.approx(1.0)  # same direction, scale differs
    assert (a.top1_compared, a.top1_agreed) == (2, 1)
    assert a.max_abs_error == pytest.approx(0.8)


def test_nan_zero_and_bytes_outputs() -> None:
    stable = {"v": np.zeros((2, 3), np.float32), "s": np.array(["a"], dtype=object)}
    candidate = {"v": np.array([[0, 0, 0], [np.nan, 0, 0]], np.float32)}
    a = compare(stable, candidate)
    assert set(a) == {"v"}  # BYTES is not compared
    assert a["v"].cosines == (1.0, 0.0)  # two zero rows agree; NaN never does
    assert a["v"].max_abs_error == float("inf")


def test_other_shape_or_missing_output_is_a_mismatch() -> None:
    with pytest.raises(Mismatch, match="shape"):
        compare({"p": np.ones((2, 3))}, {"p": np.ones((2, 4))})
    with pytest.raises(Mismatch, match="no output"):
        compare({"p": np.ones((2, 3))}, {})


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _sender(send, registry: CollectorRegistry, **kw: float) -> ShadowSender:  # type: ignore[no-untyped-def]
    return ShadowSender(send, ShadowMetrics("m", "stable", registry), **kw)  # type: ignore[arg-type]


async def test_a_stuck_candidate_never_blocks_and_the_queue_drops() -> None:
    """The candidate never answers: every offer returns at once, at most queue_size wait and
    one is in flight, the rest are counted as dropped."""
    never = asyncio.Event()

    async def send(inputs: Mapping[str, np.ndarray]):  # type: ignore[no-untyped-def]
        await never.wait()

    registry = CollectorRegistry()
    sender = _sender(send, registry, percent=100, queue_size=4)
    sender.start()
    x = {"x": np.ones((1, 2), np.float32)}
    queued = [sender.offer(x, x)]
    await asyncio.sleep(0.05)  # the task takes the first one off the queue and hangs on it
    queued += [sender.offer(x, x) for _ in range(9)]
    assert queued == [True] * 5 + [False] * 5
    assert (
        _sample(
            registry,
            "trtops_shadow_requests_total",
            model="m",
            revision="stable",
            outcome="dropped",
        )
        == 5
    )
    await sender.close()


async def test_failures_pause_the_shadow_and_self_answers_are_not_compared() -> None:
    registry = CollectorRegistry()

    async def down(inputs):  # type: ignore[no-untyped-def]
        raise ConnectionError("no canary Service")

    sender = _sender(down, registry, percent=100, pause_seconds=60)
    x = {"x": np.ones((1, 2), np.float32)}
    assert await sender.shadow_one(x, x) == "failed"
    assert sender.offer(x, x) is False  # paused: nothing sent for pause_seconds
    assert (
        _sample(
            registry, "trtops_shadow_requests_total", model="m", revision="stable", outcome="paused"
        )
        == 1
    )

    async def itself(inputs):  # type: ignore[no-untyped-def]
        return "stable", dict(inputs)

    assert await _sender(itself, CollectorRegistry(), percent=100).shadow_one(x, x) == "self"


async def test_percent_samples_a_share_and_records_per_revision_pair() -> None:
    registry = CollectorRegistry()

    async def candidate(inputs):  # type: ignore[no-untyped-def]
        return "canary", {"p": np.array([[0.0, 1.0]], np.float32)}

    import random

    sender = _sender(candidate, registry, percent=10, queue_size=10_000)
    sender._rng = random.Random(1)
    stable = {"p": np.array([[1.0, 0.0]], np.float32)}
    queued = sum(sender.offer({}, stable) for _ in range(2000))
    assert 150 < queued < 250  # about 10 %
    sender.start()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not sender._queue:
            break
    await sender.close()
    pair = {"model": "m", "revision": "stable", "candidate_revision": "canary", "output": "p"}
    assert _sample(registry, "trtops_shadow_top1_compared_total", **pair) >= queued - 1
    assert _sample(registry, "trtops_shadow_top1_agreed_total", **pair) == 0
    assert _sample(registry, "trtops_shadow_cosine_sum", **pair) == 0  # orthogonal


def test_two_real_revisions_shadow_agreement(model_dir: Path, tmp_path: Path) -> None:
    """Stable (conv, seed 0) shadows every request to a candidate serving another conv model
    (seed 1): clients get stable's answers at stable's revision; the stable pod exports low
    agreement for the pair; the candidate counts none of the shadow requests as its traffic."""
    samples.save(samples.conv_classifier(width=8, seed=1), tmp_path / "other.onnx")
    common = ("--model-name", "conv", "--precision", "fp32", "--front-ends", "1")
    candidate = start_server(
        tmp_path, "--model", str(tmp_path / "other.onnx"), "--revision", "cand", *common
    )
    stable = start_server(
        tmp_path,
        "--model",
        str(model_dir / "conv.onnx"),
        "--revision",
        "stab",
        *common,
        "--shadow-url",
        candidate.infer_url("conv"),
        "--shadow-percent",
        "100",
    )
    try:
        for i in range(20):
            r = requests.post(
                stable.infer_url("conv"), json=infer_body(conv_input(2, i)), timeout=10
            )
            assert r.status_code == 200
            assert r.json()["model_version"] == "stab"
        pair = {"revision": "stab", "candidate_revision": "cand", "output": "logits"}
        deadline = time.monotonic() + 20
        while stable.metric("trtops_shadow_cosine_count", **pair) < 40:
            assert time.monotonic() < deadline, stable.metrics()
            time.sleep(0.2)
        mean_cos = stable.metric("trtops_shadow_cosine_sum", **pair) / 40
        agreed = stable.metric("trtops_shadow_top1_agreed_total", **pair)
        assert mean_cos < 0.9
        assert agreed < 40
        assert stable.metric("trtops_shadow_requests_total", outcome="compared") == 20
        # the shadow requests were answered, but not counted as the candidate's requests
        assert candidate.metric("trtops_requests_total", revision="cand") == 0
    finally:
        assert stable.stop() == 0
        assert candidate.stop() == 0
