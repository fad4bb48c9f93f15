"""``trtops-operator``: run the kopf operator with the ``trtops_operator.handlers`` module.

Flags become environment variables before the handlers module is imported, because kopf loads
handlers by module and the module reads its settings once (``OperatorConfig.from_env``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from collections.abc import Sequence

from trtops_operator.config import DEFAULT_WORKER_IMAGE


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
    p.add_argument(
        "--worker-image",
        default=os.environ.get("TRTOPS_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="image of the build and serve pods",
    )
    p.add_argument(
        "--image-pull-policy",
        default=os.environ.get("TRTOPS_IMAGE_PULL_POLICY", "IfNotPresent"),
        choices=["Always", "IfNotPresent", "Never"],
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("TRTOPS_METRICS_PORT", "8080")),
        help="port of the operator's Prometheus metrics (0: off)",
    )
    p.add_argument(
        "--metrics-address",
        default=os.environ.get("TRTOPS_METRICS_ADDRESS", "0.0.0.0"),  # noqa: S104
        help="address the metrics server binds",
    )
    p.add_argument(
        "--job-ttl-seconds",
        type=int,
        default=int(os.environ.get("TRTOPS_JOB_TTL_SECONDS", "86400")),
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("TRTOPS_RESYNC_SECONDS", "300")),
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("TRTOPS_WORKERS", "16")),
        help="engines the work queue reconciles at once",
    )
    p.add_argument(
        "--api-threads",
        type=int,
        default=int(os.environ.get("TRTOPS_API_THREADS", "16")),
        help="API requests in flight at once (threads and pooled connections)",
    )
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="kopf liveness endpoint URL ('' disables it)",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="no peering: the chart runs one replica with strategy Recreate",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(
        {
            "TRTOPS_WORKER_IMAGE": args.worker_image,
            "TRTOPS_IMAGE_PULL_POLICY": args.image_pull_policy,
            "TRTOPS_METRICS_PORT": str(args.metrics_port),
            "TRTOPS_METRICS_ADDRESS": args.metrics_address,
            "TRTOPS_JOB_TTL_SECONDS": str(args.job_ttl_seconds),
            "TRTOPS_RESYNC_SECONDS": str(args.resync_seconds),
            "TRTOPS_API_THREADS": str(args.api_threads),
            "TRTOPS_WORKERS": str(args.workers),
        }
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import kopf

    importlib.import_module("trtops_operator.handlers")
    kopf.run(
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
    )


if __name__ == "__main__":
    main()
