"""``trtops-worker``: one entry point, one subcommand per job the worker image does.

Each subcommand lives in its own module and is imported only when chosen, so ``serve`` never
pays for the build stage's imports and the other way round.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "build": ("trtops_worker.builder.cli", "build an ONNX model into a serving artifact"),
    "compare": ("trtops_worker.builder.compare_cli", "build one model at several precisions"),
    "serve": ("trtops_worker.serve.cli", "serve an artifact over the Open Inference Protocol v2"),
    "bench": ("trtops_worker.bench.cli", "drive OIP v2 load at a server and report latency"),
    "fetch": ("trtops_worker.fetch", "copy remote inputs (s3, gs, https, hf) onto the claim"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="trtops-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else None
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(p)
    args = parser.parse_args(args_list)
    result: int = modules[args.command].run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
