"""Real small filesystems standing in for a storage claim that fills up or turns read-only.

A tmpfs mount is the same kernel path a full or read-only PersistentVolume takes (``ENOSPC``,
``EROFS``), with no fake in between. Mounting needs CAP_SYS_ADMIN (root in the dev container,
``sudo`` on CI runners); without it :func:`mount_tmpfs` raises ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "mount_tmpfs", "remount"]


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    return subprocess.run(
        [*prefix, "mount", *args], capture_output=True, text=True, timeout=30, check=False
    )


@contextlib.contextmanager
def mount_tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB at ``path`` (world-writable), unmounted afterwards."""
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here")
    path.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size_kib}k,mode=1777", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        _mount("-o", "remount,rw", str(path))
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*prefix, "umount", "-l", str(path)], timeout=30, check=False)


def remount(path: Path, mode: str) -> None:
    """Turn a mount from :func:`mount_tmpfs` read-only (``"ro"``) or back (``"rw"``)."""
    done = _mount("-o", f"remount,{mode}", str(path))
    assert done.returncode == 0, done.stderr


def fill(path: Path, leave_kib: int = 0) -> Path:
    """Write one file until the filesystem at ``path`` has at most ``leave_kib`` KiB free."""
    filler = path / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb") as f:
        try:
            while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave_kib * 1024:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler
