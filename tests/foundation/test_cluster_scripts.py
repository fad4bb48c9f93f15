"""The cluster scripts meet bad situations with a clear message and recover, never a hang: a port
already taken, a half-built binary in the cache, a stale cluster whose processes are gone, a
component kwokctl no longer knows of."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import REPO, cache_dir

CLUSTER = REPO / "hack" / "cluster.sh"
BUILD = REPO / "hack" / "build-controlplane.sh"


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.cluster
def test_taken_port_is_reported_without_touching_anything(kubeconfig: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(
            str(CLUSTER),
            "up",
            env={"TRTOPS_CLUSTER": "porttest", "TRTOPS_APISERVER_PORT": str(port)},
            timeout=120,
        )
    assert proc.returncode != 0
    assert f"port {port}" in proc.stderr
    assert "in use" in proc.stderr
    # Nothing half-made is left behind.
    assert _run(str(CLUSTER), "status", env={"TRTOPS_CLUSTER": "porttest"}).returncode != 0


@pytest.mark.cluster
@pytest.mark.slow
def test_stale_cluster_is_recreated(kubeconfig: Path) -> None:
    env = {"TRTOPS_CLUSTER": "staletest"}
    try:
        assert _run(str(CLUSTER), "up", env=env).returncode == 0
        kwokctl = str(cache_dir() / "current" / "kwokctl")
        workdir = str(cache_dir() / "kwok")
        stop = _run(
            kwokctl, "stop", "cluster", "--name", "staletest", env={"KWOK_WORKDIR": workdir}
        )
        assert stop.returncode == 0, stop.stderr
        assert _run(str(CLUSTER), "status", env=env).returncode != 0

        again = _run(str(CLUSTER), "up", env=env)
        assert again.returncode == 0, again.stderr
        assert "stale" in again.stderr
        assert _run(str(CLUSTER), "status", env=env).returncode == 0
    finally:
        _run(str(CLUSTER), "down", env=env)


def test_down_stops_a_component_kwokctl_does_not_know_of(tmp_path: Path) -> None:
    """kwokctl can miss a cluster while another is created or deleted, and its components then
    outlive ``down`` holding their ports; ``down`` stops whatever runs from the cluster's folder.
    The left-over component is played by ``sleep`` run from that folder."""
    env = {"TRTOPS_CLUSTER": "orphantest", "TRTOPS_CACHE": str(tmp_path)}
    binary = tmp_path / "kwok" / "clusters" / "orphantest" / "bin" / "kube-apiserver"
    binary.parent.mkdir(parents=True)
    shutil.copy("/bin/sleep", binary)
    left = subprocess.Popen([str(binary), "300"])
    try:
        down = _run(str(CLUSTER), "down", env=env, timeout=60)
        assert down.returncode == 0, down.stderr
        assert left.wait(timeout=10) is not None  # stopped, not left holding a port
        assert not binary.parent.exists()
    finally:
        left.kill()
        left.wait()


@pytest.mark.slow
def test_half_built_binary_in_cache_is_rebuilt(tmp_path: Path) -> None:
    """A truncated binary (an interrupted copy) is detected and rebuilt; the Go build cache
    makes this quick once the real cache has been built."""
    real_bin = cache_dir() / "bin"  # built by `make setup` before any test runs
    fake_cache = tmp_path / "cache"
    (fake_cache / "bin").mkdir(parents=True)
    kwokctl = next(real_bin.glob("kwokctl-*"))
    broken = fake_cache / "bin" / kwokctl.name
    broken.write_bytes(kwokctl.read_bytes()[:4096])
    broken.chmod(0o755)

    proc = _run(str(BUILD), "kwokctl", env={"TRTOPS_CACHE": str(fake_cache)}, timeout=600)

    assert proc.returncode == 0, proc.stderr
    assert "building kwokctl" in proc.stderr
    assert _run(str(fake_cache / "current" / "kwokctl"), "--version").returncode == 0
    shutil.rmtree(fake_cache)
