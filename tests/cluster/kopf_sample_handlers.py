"""A trivial kopf operator used to prove that KopfRunner works against the local cluster: it stamps
every ConfigMap labelled ``trtops.dev/echo`` with an annotation derived from its data."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.server_timeout = 10
    settings.posting.level = 0


@kopf.on.create("configmaps", labels={"trtops.dev/echo": kopf.PRESENT})
def echo(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    patch.metadata.annotations["trtops.dev/echoed"] = str(
        body.get("data", {}).get("say", "")
    ).upper()
