"""Cores the server may use (the affinity, capped by a cgroup v2 CPU quota) and how the
defaults split them into front ends, instances and threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trtops_worker.serve.cpus import (
    Sizing,
    UsableCpus,
    cgroup_cpu_limit,
    plan_sizing,
    usable_cpus,
    wide_threads,
)
from trtops_worker.serve.wide import usable_memory, weight_bytes


@pytest.mark.parametrize(
    ("line", "cpus"),
    [
        ("max 100000\n", None),  # no limit
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("0 100000", None),  # nonsense is no limit, never zero threads
        ("garbage", None),
        ("", None),
    ],
)
def test_cgroup_cpu_limit(line: str, cpus: float | None) -> None:
    assert cgroup_cpu_limit(line) == cpus


def test_a_quota_caps_the_cores_and_rounds_up(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(cpu_max).cores == 1
    assert usable_cpus(cpu_max).quota == 0.5
    cpu_max.write_text("100000000 100000\n")  # 1000 CPUs: the affinity is the cap
    assert usable_cpus(cpu_max).cores == len(os.sched_getaffinity(0))


def test_without_a_cgroup_the_affinity_is_all_there_is(tmp_path: Path) -> None:
    cpus = usable_cpus(tmp_path / "missing", v1_cpu=tmp_path / "missing")
    assert cpus.quota is None
    assert cpus.cores == len(os.sched_getaffinity(0))


def test_a_cgroup_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    """A node on cgroup v1 has no cpu.max: a 2-CPU limit on a 64-core node is
    cpu.cfs_quota_us 200000 over cpu.cfs_period_us 100000, and sizes for 2 cores, not 64."""
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    cpus = usable_cpus(tmp_path / "missing", affinity=64, v1_cpu=v1)
    assert (cpus.cores, cpus.quota) == (2, 2.0)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert usable_cpus(tmp_path / "missing", affinity=64, v1_cpu=v1) == UsableCpus(64, None)


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "expected"),
    [
        # no quota: the affinity is the pod; one front end of one one-thread instance per core
        (2, "max 100000", Sizing(front_ends=2, instances=1, intra_op_threads=1)),
        (16, "max 100000", Sizing(front_ends=16, instances=1, intra_op_threads=1)),
        # a 2-CPU limit on a 64-core node sizes for 2 cores, not 64
        (64, "200000 100000", Sizing(front_ends=2, instances=1, intra_op_threads=1)),
        # 1.5 CPUs rounds up to 2; half a CPU is still one
        (64, "150000 100000", Sizing(front_ends=2, instances=1, intra_op_threads=1)),
        (64, "50000 100000", Sizing(front_ends=1, instances=1, intra_op_threads=1)),
        # a pod pinned to 8 cores (static CPU manager) under a 32-CPU quota: the pinning wins
        (8, "3200000 100000", Sizing(front_ends=8, instances=1, intra_op_threads=1)),
    ],
)
def test_default_sizing_fills_the_usable_cores(
    tmp_path: Path, affinity: int, cpu_max: str, expected: Sizing
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    cores = usable_cpus(tmp_path / "cpu.max", affinity=affinity).cores
    sizing = plan_sizing(cores)
    assert sizing == expected
    assert sizing.threads == cores


@pytest.mark.parametrize(
    ("cores", "flags", "expected"),
    [
        # fewer front ends: their cores go to instances, then to threads
        (16, {"front_ends": 4}, Sizing(4, 4, 1)),
        (16, {"front_ends": 1, "instances": 2}, Sizing(1, 2, 8)),
        # instances or threads given: front ends fill the rest of the cores
        (8, {"instances": 2}, Sizing(4, 2, 1)),
        (16, {"intra_op_threads": 4}, Sizing(4, 1, 4)),
        (16, {"front_ends": 1, "intra_op_threads": 4}, Sizing(1, 4, 4)),
        (2, {"front_ends": 1, "intra_op_threads": 2}, Sizing(1, 1, 2)),
        # everything given is kept, even past the cores (the user's call)
        (2, {"front_ends": 3, "instances": 2, "intra_op_threads": 2}, Sizing(3, 2, 2)),
        # more front ends than cores: one one-thread instance each, never zero
        (2, {"front_ends": 4}, Sizing(4, 1, 1)),
        # a cap on the default front ends (TensorRT: one engine copy each on the GPU) gives
        # their cores to instances (the CPU fallback's sessions); a given count is kept
        (16, {"max_front_ends": 4}, Sizing(4, 4, 1)),
        (2, {"max_front_ends": 4}, Sizing(2, 1, 1)),
        (16, {"max_front_ends": 4, "front_ends": 8}, Sizing(8, 2, 1)),
    ],
)
def test_flags_override_the_defaults_and_the_rest_fills_in(
    cores: int, flags: dict[str, int], expected: Sizing
) -> None:
    assert plan_sizing(cores, **flags) == expected


@pytest.mark.parametrize(
    ("sizing", "cores", "given", "wide"),
    [
        (plan_sizing(16), 16, -1, 16),  # one-thread front ends: a lone batch takes every core
        (plan_sizing(2), 2, -1, 2),
        (plan_sizing(1), 1, -1, 0),  # one front end: nothing to share with
        (plan_sizing(16, front_ends=1), 16, -1, 0),  # instances share the process already
        (plan_sizing(16, intra_op_threads=4), 16, -1, 0),  # threads chosen: kept as given
        (plan_sizing(16), 16, 0, 0),  # --wide-threads 0: off
        (plan_sizing(16), 16, 1, 0),  # one thread is no wider than the instance
        (plan_sizing(16), 16, 8, 8),
        # forced, but no wider than the instances' threads: a second copy of the weights for
        # nothing
        (plan_sizing(16, intra_op_threads=4), 16, 4, 0),
        (plan_sizing(16, intra_op_threads=4), 16, 8, 8),
    ],
)
def test_wide_threads_auto_is_every_core_for_one_thread_front_ends(
    sizing: Sizing, cores: int, given: int, wide: int
) -> None:
    assert wide_threads(sizing, cores, given) == wide


@pytest.mark.parametrize(
    ("weights_mb", "memory_mb", "wide"),
    [
        (4, 8192, 16),  # the benchmark model: 16 more copies are nothing
        (100, 8192, 16),  # 1.6 GB of 8 GB: under a quarter
        (200, 8192, 0),  # 3.2 GB: a pod that fits today must not run out because of the default
        (200, None, 16),  # memory unknown: assumed to fit
    ],
)
def test_the_automatic_wide_session_needs_room_for_a_second_copy_of_the_weights(
    weights_mb: int, memory_mb: int | None, wide: int
) -> None:
    memory = None if memory_mb is None else memory_mb << 20
    automatic = wide_threads(
        plan_sizing(16), 16, -1, weight_bytes=weights_mb << 20, memory_bytes=memory
    )
    assert automatic == wide
    forced = wide_threads(plan_sizing(16), 16, 8, weight_bytes=weights_mb << 20, memory_bytes=1)
    assert forced == 8  # --wide-threads N is the user's call


def test_usable_memory_is_the_cgroup_limit_else_what_the_node_has_available(
    tmp_path: Path,
) -> None:
    limit, meminfo = tmp_path / "memory.max", tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    limit.write_text("4294967296\n")
    no_v1 = tmp_path / "absent"  # not this host's own v1 limit
    assert usable_memory(limit, meminfo, no_v1) == 4 << 30
    limit.write_text("max\n")  # no limit set
    assert usable_memory(limit, meminfo, no_v1) == 20000000 * 1024
    assert usable_memory(tmp_path / "absent", tmp_path / "absent", tmp_path / "absent") is None


def test_usable_memory_reads_a_cgroup_v1_limit(tmp_path: Path) -> None:
    """A node on cgroup v1 has no memory.max: the pod's limit is memory.limit_in_bytes, not
    the node's free memory (a 2 GB pod on a 64 GB node must not size for 64 GB)."""
    absent, meminfo, v1 = tmp_path / "absent", tmp_path / "meminfo", tmp_path / "limit_in_bytes"
    meminfo.write_text("MemTotal:       64000000 kB\nMemAvailable:   60000000 kB\n")
    v1.write_text("2147483648\n")
    assert usable_memory(absent, meminfo, v1) == 2 << 30
    v1.write_text("9223372036854771712\n")  # v1's "no limit"
    assert usable_memory(absent, meminfo, v1) == 60000000 * 1024


def test_weight_bytes_count_the_external_data_files(tmp_path: Path) -> None:
    """Big models keep their weights beside the graph (ONNX external data): those bytes are
    what a second session copies."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((256, 256), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256])],
        [weights],
    )
    model = helper.make_model(graph)
    inline, external = tmp_path / "inline.onnx", tmp_path / "external.onnx"
    onnx.save(model, str(inline))
    onnx.save(
        model, str(external), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert weight_bytes(inline) >= 256 * 256 * 4
    assert external.stat().st_size < 4096  # the graph alone
    assert weight_bytes(external) >= 256 * 256 * 4
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert weight_bytes(tmp_path / "junk.onnx") == len(b"not a model")


def test_every_front_end_decides_on_the_wide_session_from_the_supervisors_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MemAvailable moves: front ends each reading it could land on both sides of the memory
    rule (some wide, some not), and each would parse the model again. The supervisor reads
    both once; the front ends use that."""
    from trtops_worker.serve import wide
    from trtops_worker.serve.frontends import FRONT_END_ENV, MULTIPROC_ENV

    model = tmp_path / "model.onnx"
    model.write_bytes(b"\0" * (1 << 20))  # not ONNX: counts as its own size, 1 MB
    monkeypatch.setattr(wide, "usable_memory", lambda: 32 << 20)  # the supervisor's reading
    for name in (wide.POD_MEMORY_ENV, wide.WEIGHT_BYTES_ENV):  # restored after the test
        monkeypatch.setenv(name, "")
    wide.share_readings(model)
    assert os.environ[wide.POD_MEMORY_ENV] == str(32 << 20)
    assert os.environ[wide.WEIGHT_BYTES_ENV] == str(1 << 20)
    monkeypatch.setattr(wide, "usable_memory", lambda: 1 << 40)  # what a front end would read

    def parsed_again(model: Path) -> int:
        raise AssertionError(f"a front end parsed {model} again")

    monkeypatch.setattr(wide, "weight_bytes", parsed_again)
    monkeypatch.setenv(FRONT_END_ENV, "1")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    # 16 front ends x 1 MB is over a quarter of the shared 32 MB, not of the 1 TB read later
    assert wide.plan_wide(plan_sizing(16), 16, -1, model, "onnxruntime") == (0, None)
    monkeypatch.setenv(wide.POD_MEMORY_ENV, str(1 << 30))
    threads, board = wide.plan_wide(plan_sizing(16), 16, -1, model, "onnxruntime")
    assert threads == 16
    assert board is not None
    board.close()
