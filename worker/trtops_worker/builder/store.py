"""The content-addressed store on the storage claim: ``<storage>/<key>/``.

A build happens in a temporary folder ``<storage>/.tmp-<key>-<random>/`` and becomes visible
with one ``os.rename``, so a reader sees a complete entry or none: a build killed mid-way
leaves only a temporary folder, which the next run removes. A live builder holds an exclusive
``flock`` on ``.lock`` inside its temporary folder; a folder whose lock can be taken belongs to
a dead process (on this or another node sharing the claim) and is stale.

A build stopped by SIGTERM (the Job deleted, the pod evicted) removes its own temporary folder
before it exits: :func:`abandon_active` is what the worker's signal watcher calls.

An entry counts only if its ``metadata.json`` parses and its artifact still has the sha256
recorded there; anything else (a truncated or corrupted plan) is moved aside and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from trtops_worker.builder.errors import StorageError
from trtops_worker.builder.model import sha256_file

__all__ = ["METADATA", "Store", "TempEntry", "abandon_active"]

METADATA = "metadata.json"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_LOCK = ".lock"
_NO_LOCK_GRACE_S = 60.0  # a folder is created a moment before its lock: don't race the creator
_ACTIVE: set[Path] = set()  # this process's temporary folders, for abandon_active


def abandon_active() -> list[Path]:
    """Remove this process's temporary folders now (from any thread): each is first renamed
    aside, so a build still writing into it fails instead of recreating files behind us."""
    removed = []
    for path in list(_ACTIVE):
        trash = path.with_name(f"{_TRASH_PREFIX}{path.name}")
        try:
            os.rename(path, trash)
        except OSError:
            continue  # published or removed meanwhile
        shutil.rmtree(trash, ignore_errors=True)
        _ACTIVE.discard(path)
        removed.append(path)
    return removed


class TempEntry:
    """A build in progress: write into ``path``, then :meth:`Store.publish` it."""

    def __init__(self, path: Path, lock: IO[bytes]) -> None:
        self.path = path
        self._lock = lock

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._lock.close()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()  # the operator requires an absolute path in the result

    def ensure_writable(self) -> None:
        """Create the root if needed and prove a file can be written there."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StorageError(
                "StorageUnwritable", f"cannot write to storage {self.root}: {exc.strerror or exc}"
            ) from exc

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The metadata of a valid entry for ``key``; an invalid entry is discarded."""
        folder = self.entry(key)
        if not folder.exists():
            return None
        try:
            metadata: dict[str, Any] = json.loads((folder / METADATA).read_text())
            artifact = folder / str(metadata["artifact"])
            if metadata.get("key") == key and sha256_file(artifact) == metadata["artifact_sha256"]:
                return metadata
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self._discard(folder)
        return None

    def begin(self, key: str) -> TempEntry:
        """Remove stale temporary folders, then open a fresh one for ``key``, locked."""
        self.clean_stale()
        try:
            path = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{key[:16]}-", dir=self.root))
            path.chmod(0o755)  # serving pods may run as another user than the build Job
            lock = (path / _LOCK).open("wb")
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise StorageError(
                "StorageUnwritable", f"cannot create a build folder in {self.root}: {exc}"
            ) from exc
        _ACTIVE.add(path)
        return TempEntry(path, lock)

    def publish(self, temp: TempEntry, key: str) -> Path:
        """Make ``temp`` the entry for ``key`` in one rename; a valid entry that appeared in the
        meantime (another builder, same key) wins and ours is dropped."""
        final = self.entry(key)
        (temp.path / _LOCK).unlink(missing_ok=True)  # still held through the open descriptor
        try:
            if final.exists():
                self.lookup(key)  # moves an invalid entry aside; a valid one stays and wins
            if not final.exists():
                _fsync_tree(temp.path)
                os.rename(temp.path, final)
                _fsync_dir(self.root)
            else:
                shutil.rmtree(temp.path, ignore_errors=True)
        except OSError as exc:
            raise StorageError(
                "StorageUnwritable", f"cannot publish {key} in {self.root}: {exc}"
            ) from exc
        finally:
            _ACTIVE.discard(temp.path)
            temp.release()
        return final

    def shared_file(self, name: str) -> Path:
        """A file shared across keys (the timing caches), outside every entry."""
        return self.root / "shared" / name

    def replace_shared(self, name: str, source: Path) -> None:
        """Atomically replace a shared file with a copy of ``source``; best effort."""
        target = self.shared_file(name)
        try:
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f"{_TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except OSError:
            pass

    def abandon(self, temp: TempEntry) -> None:
        shutil.rmtree(temp.path, ignore_errors=True)
        _ACTIVE.discard(temp.path)
        temp.release()

    def clean_stale(self) -> list[Path]:
        """Remove temporary folders of dead builds and leftovers of discarded entries."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for child in self.root.iterdir():
            if child.name.startswith(_TRASH_PREFIX) or (
                child.name.startswith(_TMP_PREFIX) and _is_stale(child)
            ):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        return removed

    def _discard(self, folder: Path) -> None:
        trash = self.root / f"{_TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _is_stale(folder: Path) -> bool:
    lock_path = folder / _LOCK
    try:
        with lock_path.open("rb") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live builder holds it
            return True
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > _NO_LOCK_GRACE_S
        except OSError:
            return False
    except OSError:
        return False


def _fsync_tree(folder: Path) -> None:
    """Flush the files before the rename makes them visible: a node crash must not publish holes."""
    for child in folder.iterdir():
        if child.is_file():
            with child.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
