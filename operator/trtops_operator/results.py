"""The build worker's result, read from its container's termination message.

The worker writes one compact JSON object: ``{"ok": true, "key", "path", ...}`` on success,
``{"ok": false, "category", "reason", "message"}`` on failure. With
``terminationMessagePolicy: FallbackToLogsOnError`` a worker that died before writing it leaves
the tail of its log instead; that is reported as a crash with the log tail as the message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from trtops_worker.contract import BuildSuccessResult

__all__ = ["BuildFailure", "BuildSuccess", "parse_result"]

_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,127}$")
MESSAGE_MAX = 1024
# Fields of a success copied into status.plans as they are (bounded by the CRD's status schema).
PLAN_FIELDS = (
    "path",
    "artifact",
    "sha256",
    "precision",
    "backend",
    "cached",
    "buildSeconds",
    "versions",
    "device",
    "accuracy",
    "benchmark",
)


@dataclass(frozen=True)
class BuildSuccess:
    result: BuildSuccessResult

    @property
    def key(self) -> str:
        return self.result.key

    @property
    def path(self) -> str:
        return self.result.path

    def plan_fields(self) -> dict[str, Any]:
        """The result as a ``status.plans`` entry (``artifactKey`` is the worker's content key)."""
        data = self.result.model_dump(mode="json", by_alias=True, exclude_none=True)
        out = {k: data[k] for k in PLAN_FIELDS if k in data}
        out["path"] = self.path
        out["artifactKey"] = self.key
        return out


@dataclass(frozen=True)
class BuildFailure:
    category: str
    reason: str
    message: str


def _reason(value: Any, default: str) -> str:
    """Condition reasons must be CamelCase words; anything else falls back to ``default``."""
    text = str(value or "")
    text = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text) if part)
    return text if _REASON.match(text) else default


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_MAX else "..." + text[-(MESSAGE_MAX - 3) :]


def parse_result(message: str | None) -> BuildSuccess | BuildFailure | None:
    """Read a termination message; None when there is none (the pod has not finished)."""
    if not message or not message.strip():
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return BuildFailure("Crash", "WorkerCrashed", _short(message))
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        return BuildFailure("Crash", "MalformedResult", _short(message))
    if data["ok"]:
        try:
            return BuildSuccess(BuildSuccessResult.model_validate(data))
        except ValidationError as exc:
            where = ".".join(str(x) for x in exc.errors()[0]["loc"])
            return BuildFailure(
                "Crash",
                "MalformedResult",
                f"success result with a bad {where}: needs a key and an absolute path",
            )
    category = _reason(data.get("category"), "Unknown")
    return BuildFailure(
        category=category,
        reason=_reason(data.get("reason"), category),
        message=_short(str(data.get("message") or "")),
    )
