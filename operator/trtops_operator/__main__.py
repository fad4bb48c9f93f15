"""``trtops-operator``: run the kopf operator with the ``trtops_operator.handlers`` module.

Each setting of :class:`~trtops_operator.config.OperatorConfig` is one flag (defaults from the
environment, else the config). Flags become environment variables before kopf starts, because
kopf loads the handlers by module name and their startup reads ``OperatorConfig.from_env``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from trtops_operator.config import OperatorConfig
from trtops_operator.leader import default_namespace


def _type_of(annotation: Any) -> Callable[[str], Any]:
    base = (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )
    return base if base in (int, float) else str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trtops-operator", description=__doc__)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; glob patterns allowed)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    for name, field in OperatorConfig.model_fields.items():
        # One flag per setting; its default is the environment's value, else the config's.
        env = OperatorConfig.env_name(name)
        choices = typing.get_args(field.annotation) if name == "image_pull_policy" else None
        p.add_argument(
            "--" + name.replace("_", "-"),
            default=os.environ.get(env, field.default),
            type=_type_of(field.annotation),
            choices=choices or None,
            help=f"{field.description or ''} (env {env}; default {field.default})".lstrip(),
        )
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="kopf liveness endpoint URL ('' disables it)",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no leader election: act at once, alone (a second operator would double every "
        "action); by default operators elect one leader on a Lease and the others wait",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("TRTOPS_LEADER_ELECTION_NAMESPACE", ""),
        help="namespace of the Lease (default: the pod's, else the first watched namespace, "
        "else default)",
    )
    p.add_argument(
        "--leader-election-name",
        default=os.environ.get("TRTOPS_LEADER_ELECTION_NAME", "trtops-operator"),
        help="name of the Lease: operators sharing it elect one leader",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    fields = {name: getattr(args, name) for name in OperatorConfig.model_fields}
    os.environ.update(OperatorConfig.model_validate(fields).to_env())
    os.environ.update(
        {
            "TRTOPS_LEADER_ELECTION": "0" if args.standalone else "1",
            "TRTOPS_LEADER_ELECTION_NAMESPACE": args.leader_election_namespace
            or default_namespace(args.namespace),
            "TRTOPS_LEADER_ELECTION_NAME": args.leader_election_name,
        }
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import kopf

    importlib.import_module("trtops_operator.handlers")
    kopf.run(
        standalone=True,  # never kopf's peering: see trtops_operator.leader for why
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
    )


if __name__ == "__main__":
    main()
