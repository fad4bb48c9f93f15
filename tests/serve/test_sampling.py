"""Request sampling: the reservoir's uniformity and bounds, atomic files, a queue that drops
instead of blocking, and a real ``trtops-worker serve`` keeping what its clients sent (and not
what a shadow sent)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry
from trtops_worker.serve.sampling import Reservoir, Sampler, prune_revisions, write_atomically
from trtops_worker.serve.shadow import SHADOW_HEADER

from tests.serve.conftest import conv_input, infer_body
from tests.support.worker import start_server

ROW_BYTES = 4 * 4  # one row of a (N, 4) float32 input


def _rows(start: int, count: int) -> dict[str, np.ndarray]:
    """Rows numbered ``start..start+count-1`` (every element of row i is i)."""
    ids = np.arange(start, start + count, dtype=np.float32)
    return {"x": np.repeat(ids[:, None], 4, axis=1)}


def test_algorithm_r_keeps_a_uniform_sample_of_every_row_offered() -> None:
    """100 000 rows in requests of 10, room for 1 000: each tenth of the stream holds about a
    tenth of the sample (early rows are not favoured, nor late ones)."""
    reservoir = Reservoir(1000 * ROW_BYTES, random.Random(7))
    for start in range(0, 100_000, 10):
        assert reservoir.offer(_rows(start, 10)) == (10, 0)
    kept = reservoir.arrays()["x"][:, 0]
    assert len(kept) == reservoir.capacity == 1000
    assert len(set(kept.tolist())) == 1000  # no row twice
    per_tenth = np.bincount((kept // 10_000).astype(int), minlength=10)
    assert per_tenth.min() > 60, per_tenth  # ~100 each, 4 sigma
    assert per_tenth.max() < 140, per_tenth


def test_bounded_in_bytes_and_one_shape_only() -> None:
    reservoir = Reservoir(10 * ROW_BYTES, random.Random(0))
    reservoir.offer(_rows(0, 50))
    assert reservoir.offer({"x": np.ones((3, 5), np.float32)}) == (0, 3)  # another shape
    assert reservoir.offer({"s": np.array(["a", "b"], dtype=object)}) == (0, 2)  # BYTES
    assert reservoir.offer({"x": np.ones((2, 4), np.float32), "y": np.ones(3)}) == (0, 1)
    assert reservoir.arrays()["x"].nbytes <= 10 * ROW_BYTES
    too_big = Reservoir(ROW_BYTES - 1, random.Random(0))
    assert too_big.offer(_rows(0, 5)) == (0, 5)
    assert too_big.arrays() == {}


def test_sampled_rows_are_copies_not_the_request_buffer() -> None:
    reservoir = Reservoir(10 * ROW_BYTES, random.Random(0))
    request = _rows(0, 2)
    reservoir.offer(request)
    request["x"][:] = -1  # the server reuses nothing, but a sample must not depend on it
    assert reservoir.arrays()["x"][:, 0].tolist() == [0.0, 1.0]


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "r1" / "pod.npz"
    write_atomically(path, _rows(0, 3))
    # The second array cannot be written (a lambda does not pickle): the write fails after
    # the temporary file was opened and the first array written.
    broken = {"x": np.ones((2, 4)), "y": np.array([lambda: 0], dtype=object)}
    with pytest.raises(Exception, match="pickle"):
        write_atomically(path, broken)
    with np.load(path) as npz:
        assert npz["x"][:, 0].tolist() == [0.0, 1.0, 2.0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["pod.npz"]  # no temporary left


def _sampler(root: Path, registry: CollectorRegistry, **kw: float) -> Sampler:
    return Sampler(
        root,
        revision="r1",
        writer="pod",
        model="m",
        max_bytes=int(kw.pop("max_bytes", 100 * ROW_BYTES)),
        registry=registry,
        rng=random.Random(0),
        **kw,  # type: ignore[arg-type]
    )


def test_a_full_queue_drops_and_never_blocks(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    sampler = _sampler(tmp_path, registry, queue_size=4)
    started = time.perf_counter()
    queued = [sampler.offer(_rows(i, 1)) for i in range(10)]  # no task drains it
    assert time.perf_counter() - started < 0.05
    assert queued == [True] * 4 + [False] * 6
    labels = {"model": "m", "revision": "r1", "outcome": "dropped"}
    assert registry.get_sample_value("trtops_sample_rows_total", labels) == 6


def test_a_new_window_replaces_the_file_only_once_it_holds_as_many_rows(tmp_path: Path) -> None:
    sampler = _sampler(tmp_path, CollectorRegistry(), window_seconds=0.0)
    sampler.offer(_rows(0, 8))
    sampler.drain()
    assert sampler.flush()
    sampler.offer(_rows(100, 3))  # a new window (0 s): 3 rows, the file has 8
    sampler.drain()
    assert not sampler.flush()
    with np.load(sampler.path) as npz:
        assert len(npz["x"]) == 8
    sampler.offer(_rows(200, 9))
    sampler.drain()  # yet another window: 9 rows >= 8
    assert sampler.flush()
    with np.load(sampler.path) as npz:
        assert sorted(npz["x"][:, 0].tolist()) == list(range(200, 209))


def test_old_revisions_are_pruned_and_the_own_one_kept(tmp_path: Path) -> None:
    now = time.time()
    for revision, age in (("old", 10_000.0), ("recent", 10.0), ("mine", 10_000.0)):
        folder = tmp_path / revision
        folder.mkdir()
        (folder / "pod.npz").write_bytes(b"x")
        os.utime(folder / "pod.npz", (now - age, now - age))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("not a sample")
    os.utime(tmp_path / "notes" / "keep.txt", (now - 10_000, now - 10_000))
    assert prune_revisions(tmp_path, "mine", 3600, now) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes", "recent"]
    assert (tmp_path / "notes" / "keep.txt").exists()  # only sample files are removed


@pytest.fixture
def sampling_server(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[object, Path]]:
    root = tmp_path / "samples"
    monkeypatch.setenv("TRTOPS_POD_NAME", "conv-cpu-abc")  # the Deployment's downward API
    server = start_server(
        tmp_path,
        "--model",
        str(model_dir / "conv.onnx"),
        "--model-name",
        "conv",
        "--revision",
        "r1",
        "--front-ends",
        "1",
        "--sample-dir",
        str(root),
    )
    yield server, root
    server.stop()


def test_a_real_server_keeps_what_its_clients_sent(
    sampling_server: tuple[object, Path],
) -> None:
    """20 requests of 2 rows, one shadow copy and one bad request: the file written at stop
    holds exactly the 40 client rows, as sent; the shadow's and the bad request's are not there."""
    server, root = sampling_server
    url = server.infer_url("conv")  # type: ignore[attr-defined]
    sent = [conv_input(2, seed) for seed in range(20)]
    for x in sent:
        assert requests.post(url, json=infer_body(x), timeout=10).status_code == 200
    shadow = conv_input(1, 999)
    r = requests.post(url, json=infer_body(shadow), headers={SHADOW_HEADER: "r0"}, timeout=10)
    assert r.status_code == 200
    bad = requests.post(url, json=infer_body(np.ones((1, 3, 8, 8), np.float32)), timeout=10)
    assert bad.status_code == 400
    assert server.stop() == 0  # type: ignore[attr-defined]
    with np.load(root / "r1" / "conv-cpu-abc.npz", allow_pickle=False) as npz:
        kept = npz["input"]
    expected = np.concatenate(sent)
    assert kept.shape == expected.shape
    order = np.lexsort(kept.reshape(len(kept), -1).T[:3])
    want = np.lexsort(expected.reshape(len(expected), -1).T[:3])
    np.testing.assert_array_equal(kept[order], expected[want])
    assert not any(np.allclose(row, shadow[0]) for row in kept)
