"""Storage faults of the build worker on real filesystems: a full claim, a read-only claim, a
build stopped by SIGTERM, and leftovers of a killed build removed at the next build.

The full and read-only claims are real tmpfs mounts (``tests/support/volumes.py``): the same
``ENOSPC``/``EROFS`` a PersistentVolume gives. Skipped where nothing may mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.builder.conftest import RunBuild, SampleModel, int8_build_argv
from tests.support.volumes import fill, mount_tmpfs, remount


def _entries(storage: Path) -> list[str]:
    return sorted(p.name for p in storage.iterdir()) if storage.is_dir() else []


def test_full_claim_is_storage_full_and_leaves_no_partial_plan(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    with mount_tmpfs(tmp_path / "claim", size_kib=512) as claim:
        storage = claim / "store"
        storage.mkdir()
        filler = fill(claim, leave_kib=8)
        code, result = run_build("--model", conv.model, "--precision", "fp32", storage=storage)
        assert (code, result["category"], result["reason"]) == (13, "storage", "StorageFull")
        assert "full" in result["message"]
        assert [e for e in _entries(storage) if e != "shared"] == []  # no entry, no temp folder

        # The fault goes away: the same build, run again (the Job's retry), publishes a plan.
        filler.unlink()
        code, result = run_build("--model", conv.model, "--precision", "fp32", storage=storage)
        assert code == 0, result
        assert result["ok"]
        assert (Path(result["path"]) / "metadata.json").is_file()


def test_read_only_claim_is_storage_unwritable(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    with mount_tmpfs(tmp_path / "claim", size_kib=8192) as claim:
        storage = claim / "store"
        storage.mkdir()
        remount(claim, "ro")
        code, result = run_build("--model", conv.model, "--precision", "fp32", storage=storage)
        assert (code, result["category"], result["reason"]) == (13, "storage", "StorageUnwritable")
        assert "Read-only" in result["message"]
        assert _entries(storage) == []
        remount(claim, "rw")
        code, result = run_build("--model", conv.model, "--precision", "fp32", storage=storage)
        assert code == 0, result
        assert result["ok"]


def test_sigterm_removes_the_temporary_folder_within_the_grace_period(
    conv: SampleModel, tmp_path: Path
) -> None:
    storage, log = tmp_path / "store", tmp_path / "log"
    proc = subprocess.Popen(
        # A long benchmark: seconds of work inside the temporary folder.
        int8_build_argv(conv, storage, log, "--benchmark-seconds", "30"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(e.startswith(".tmp-") for e in _entries(storage)):
            assert proc.poll() is None, "the build ended before it could be stopped"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.01)
        time.sleep(0.5)  # mid-way: files are being written into it
        proc.send_signal(signal.SIGTERM)
        # Kubernetes' default grace period is 30 s; the folder must be gone well before.
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e for e in _entries(storage) if e != "shared"] == []
    result = json.loads(log.read_text())
    assert (result["ok"], result["reason"]) == (False, "Terminated")
    assert "removed 1 temporary folder" in result["message"]


def test_a_cached_build_also_removes_a_dead_builds_temporary_folder(
    run_build: RunBuild, conv: SampleModel, tmp_path: Path
) -> None:
    storage = tmp_path / "store"
    code, _ = run_build("--model", conv.model, "--precision", "fp32", storage=storage)
    assert code == 0
    stale = storage / ".tmp-0123456789abcdef-dead"  # a SIGKILLed build: no lock holder
    (stale / "plan").mkdir(parents=True)
    (stale / "plan" / "partial.onnx").write_bytes(b"\0" * 4096)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    code, second = run_build("--model", conv.model, "--precision", "fp32", storage=storage)
    assert (code, second["cached"]) == (0, True)
    assert not stale.exists()
