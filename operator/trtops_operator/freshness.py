"""Never act on a copy of an engine older than the operator's own last write to it.

Reconciles read engines from the watch-fed index. After the operator writes an engine's status,
the watch brings the write back a moment later (seconds on a busy machine), and every reconcile
queued meanwhile would see the old status: a manual command still new, a transition not yet
made; each would act and tell it again (one ``pause`` gave 8 ``Paused`` Events). So each status
write's response (the engine as written, with its resourceVersion) is kept until the index
holds that version or a later one, and reconciles start from whichever copy is newer.

resourceVersions are compared as integers: the API server's are etcd revisions, which only grow
(Kubernetes calls them opaque; where one does not parse, the kept copy serves only until the
index shows exactly that version, or for ``max_age_s``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["LastWrites"]


def _rv(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _newer_or_same(cached: str, written: str) -> bool:
    if cached == written:
        return True
    if cached.isdigit() and written.isdigit():
        return int(cached) >= int(written)
    return False


class LastWrites:
    """The engine as the operator last wrote it, per key, until the index catches up."""

    def __init__(self, max_age_s: float = 60.0) -> None:
        self.max_age_s = max_age_s
        self._by_key: dict[Hashable, tuple[float, Mapping[str, Any]]] = {}

    def record(self, key: Hashable, written: Mapping[str, Any]) -> None:
        self._by_key[key] = (time.monotonic(), written)

    def forget(self, key: Hashable) -> None:
        self._by_key.pop(key, None)

    def freshest(self, key: Hashable, cached: Mapping[str, Any]) -> Mapping[str, Any]:
        """``cached`` unless the operator's own last write is newer than it."""
        kept = self._by_key.get(key)
        if kept is None:
            return cached
        at, written = kept
        # Kept, not dropped, when the index caught up: a caller may pass our own write back in
        # (a later step of the same pass), and that says nothing about the index.
        if _newer_or_same(_rv(cached), _rv(written)) or time.monotonic() - at > self.max_age_s:
            return cached
        return written
