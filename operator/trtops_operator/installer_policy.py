"""What the installer's policy allows in a spec (``--allowed-toleration-keys``,
``--allowed-node-selector-keys``), and paths that would leave their claim; checked before
anything is rendered, so a refused spec creates no pod."""

from __future__ import annotations

from trtops_worker.sources import is_remote

from trtops_operator.config import OperatorConfig
from trtops_operator.models import TrtEngineSpec


def policy_problem(spec: TrtEngineSpec, config: OperatorConfig) -> str | None:
    """What in ``spec`` the installer's policy does not allow (None: all allowed): a path that
    leaves its claim (a ``..`` segment), a toleration or nodeSelector key off the installer's
    lists, or a toleration of every taint (empty key) unless the list is ``*``. A spec that a
    shared cluster's installer did not allow would otherwise place pods on any node, e.g. a
    control-plane node."""
    uris = [("spec.model.uri", spec.model.uri)]
    if spec.build.calibration is not None:
        uris.append(("spec.build.calibration.uri", spec.build.calibration.uri))
    if spec.build.accuracy is not None:
        uris.append(("spec.build.accuracy.validation.uri", spec.build.accuracy.validation.uri))
    for field, uri in uris:
        if not is_remote(uri) and ".." in uri.removeprefix("pvc://").split("/"):
            return f"{field}: '..' is not allowed; paths stay inside their claim"
    tol_keys, sel_keys = config.toleration_keys, config.node_selector_keys
    for where, tolerations, selector in (
        ("build", spec.build.tolerations, spec.build.node_selector),
        ("serving", spec.serving.tolerations, spec.serving.node_selector),
    ):
        for tol in tolerations:
            if "*" in tol_keys:
                break
            if not tol.key:
                return (
                    f"spec.{where}.tolerations: a toleration with no key tolerates every taint"
                    " (control-plane nodes included); the operator's installer does not allow it"
                )
            if tol_keys and tol.key not in tol_keys:
                return (
                    f"spec.{where}.tolerations: key {tol.key} is not one the operator's installer"
                    f" allows ({', '.join(sorted(tol_keys))})"
                )
        for key in selector:
            if sel_keys and "*" not in sel_keys and key not in sel_keys:
                return (
                    f"spec.{where}.nodeSelector: key {key} is not one the operator's installer"
                    f" allows ({', '.join(sorted(sel_keys))})"
                )
    return None
