"""``trtops-worker serve``: the command the operator's inference Deployments run.

The flag names are a contract with the operator's Deployment builder; keep them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact import ArtifactError, read_artifact
from .backend import load_backend
from .cpus import plan_sizing, usable_cpus
from .frontends import FRONT_END_ENV, FrontEnds, follow_the_supervisor, is_front_end, reserve_port
from .wide import plan_wide, share_readings, wide_flag_error

if TYPE_CHECKING:
    from .sampling import Sampler

__all__ = ["add_arguments", "run"]

log = logging.getLogger("trtops_worker.serve")

TENSORRT_FRONT_ENDS = 4  # default front ends with the TensorRT backend, at most


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--artifact-dir", type=Path, help="build output folder holding metadata.json"
    )
    source.add_argument(
        "--model", type=Path, help="a TensorRT plan or an ONNX file to serve directly"
    )
    parser.add_argument("--fallback-model", type=Path, help="ONNX file for the CPU fallback")
    parser.add_argument(
        "--backend", choices=["onnxruntime", "tensorrt"], help="default: the artifact's"
    )
    parser.add_argument(
        "--cpu-fallback", action="store_true", help="serve on ONNX Runtime if TensorRT fails"
    )
    parser.add_argument(
        "--model-name", default=os.environ.get("TRTOPS_MODEL_NAME"), help="env TRTOPS_MODEL_NAME"
    )
    parser.add_argument(
        "--revision", default=os.environ.get("TRTOPS_REVISION", ""), help="env TRTOPS_REVISION"
    )
    parser.add_argument(
        "--precision", default=os.environ.get("TRTOPS_PRECISION"), help="env TRTOPS_PRECISION"
    )
    # Pods listen on all their addresses; a runtime that gives pods a shared network (the local
    # node agent in tests) names the address to bind through TRTOPS_BIND_HOST.
    parser.add_argument("--host", default=os.environ.get("TRTOPS_BIND_HOST", "0.0.0.0"))  # noqa: S104
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--max-batch-size", type=int, default=1, help="1 turns dynamic batching off"
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument(
        "--max-queue-size", type=int, default=128, help="past it: 503 / RESOURCE_EXHAUSTED"
    )
    parser.add_argument("--request-timeout-ms", type=int, default=10_000)
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        help="request size limit, decompressed (default: sized from the model's inputs)",
    )
    parser.add_argument(
        "--body-timeout-seconds",
        type=float,
        default=30.0,
        help="a request body not received within this is refused with 408",
    )
    parser.add_argument(
        "--front-ends",
        type=int,
        default=0,
        help="server processes sharing the ports, each with its own event loop and instances"
        " (0: one per usable core, fewer when --instances or --intra-op-threads take more)",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per instance (0: the front end's cores / instances)",
    )
    parser.add_argument(
        "--no-intra-op-spinning",
        dest="intra_op_spinning",
        action="store_false",
        help="ONNX Runtime pool threads sleep at once between parallel regions instead of"
        " spinning briefly (always so under a cgroup CPU quota: spinning burns it)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=0,
        help="ONNX Runtime sessions per front end, one batch each at a time (0: the front"
        " end's cores / intra-op threads; TensorRT runs one)",
    )
    parser.add_argument(
        "--wide-threads",
        type=int,
        default=-1,
        help="ONNX Runtime threads for a batch that starts once every other front end has"
        " been idle for 10 ms (a second session per front end: a lone request then uses the"
        " idle cores). -1 (default): every usable core when the front ends have one one-thread"
        " instance each, else none; 0: none",
    )
    parser.add_argument(
        "--batches-in-worker-thread",
        dest="run_on_loop",
        action="store_false",
        help="with one ONNX Runtime instance per front end, run batches in a worker thread"
        " instead of on the event loop's thread (the default saves two thread wake-ups per"
        " batch; a worker thread lets the loop parse requests while a batch runs)",
    )
    parser.add_argument(
        "--http-server",
        choices=["httptools", "uvicorn", "granian-asgi", "granian-rsgi"],
        default=os.environ.get("TRTOPS_HTTP_SERVER", "httptools"),
        help="the HTTP front end: trtops' own HTTP/1.1 listener on httptools (default), or the"
        " same handler under uvicorn or granian (opt-in, compared in docs/serve.md);"
        " env TRTOPS_HTTP_SERVER",
    )
    parser.add_argument(
        "--grpc-server",
        choices=["h2", "grpcio"],
        default=os.environ.get("TRTOPS_GRPC_SERVER") or None,
        help="the gRPC front end: trtops' own HTTP/2 server on the event loop (h2, the default)"
        " or grpc.aio (grpcio); docs/serve.md compares them; env TRTOPS_GRPC_SERVER",
    )
    parser.add_argument(
        "--drain-seconds", type=float, default=0.0, help="keep serving this long after SIGTERM"
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="turn ready without running sample batches first",
    )
    parser.add_argument(
        "--shadow-url",
        help="also send a share of answered requests to this OIP v2 infer URL (the candidate"
        " revision) and export how its outputs agree (docs/experiments.md)",
    )
    parser.add_argument(
        "--shadow-percent", type=float, default=0.0, help="share of requests shadowed, 0-100"
    )
    parser.add_argument(
        "--shadow-queue-size", type=int, default=64, help="shadow requests waiting at most"
    )
    parser.add_argument(
        "--sample-dir",
        type=Path,
        help="keep a sample of answered requests' inputs under this folder (serve/sampling.py;"
        " the inputs may be sensitive: docs/security.md)",
    )
    parser.add_argument(
        "--sample-max-bytes",
        type=int,
        default=64 << 20,
        help="the pod's sample size at most, shared by its front ends",
    )
    parser.add_argument(
        "--sample-window-seconds",
        type=float,
        default=86400.0,
        help="the sample is uniform over the requests of this window, then starts again",
    )
    parser.add_argument("--log-level", default=os.environ.get("TRTOPS_LOG_LEVEL", "INFO"))


def _write_termination_message(error: Exception) -> None:
    """The reason the pod could not start, for the operator (it reads the termination message:
    ``PlanIncompatible`` carries both targets so it can build a plan for this one)."""
    from trtops_worker.builder.result import compact, failure, write_termination_log

    from .backend_tensorrt import PlanIncompatible

    if isinstance(error, PlanIncompatible):
        result = failure("plan", error.reason, str(error))
        result |= {"plan": error.plan.to_json(), "pod": error.pod.to_json()}
    else:
        result = failure("backend", "BackendLoadFailed", f"{type(error).__name__}: {error}")
    path = Path(os.environ.get("TRTOPS_TERMINATION_LOG", "/dev/termination-log"))
    write_termination_log(path, compact(result))


def _sampler(args: argparse.Namespace, front_ends: int, registry: Any) -> Sampler:
    """The request sampler of this process: its share of the pod's bytes, its own file."""
    from trtops_worker.sample_layout import writer_name

    from .sampling import Sampler

    pod = os.environ.get("TRTOPS_POD_NAME") or socket.gethostname()
    return Sampler(
        args.sample_dir,
        revision=args.revision,
        writer=writer_name(pod, os.environ.get(FRONT_END_ENV)),
        model=args.model_name,
        max_bytes=max(args.sample_max_bytes, 0) // max(front_ends, 1),
        registry=registry,
        window_seconds=args.sample_window_seconds,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.model_name:
        log.error("--model-name (or TRTOPS_MODEL_NAME) is required")
        return 2
    precision = args.precision or ""
    fallback_model: Path | None = args.fallback_model
    if args.artifact_dir is not None:
        try:
            artifact = read_artifact(args.artifact_dir)
        except ArtifactError as e:
            log.error("%s", e)
            return 2
        model, backend = artifact.model, args.backend or artifact.backend
        precision = precision or artifact.precision
        fallback_model = fallback_model or artifact.fallback_model
    else:
        model = args.model
        backend = args.backend or (
            "tensorrt" if model.suffix in (".plan", ".engine") else "onnxruntime"
        )

    if min(args.instances, args.intra_op_threads, args.front_ends) < 0:
        log.error("--front-ends, --instances and --intra-op-threads must be >= 0 (0: automatic)")
        return 2
    cpus = usable_cpus()
    sizing = plan_sizing(
        cpus.cores,
        front_ends=args.front_ends,
        instances=args.instances,
        intra_op_threads=args.intra_op_threads,
        # Each front end deserializes its own engine and context on the one GPU: GPU memory
        # grows with them. Capped until measured on a GPU (nothing here runs TensorRT).
        max_front_ends=TENSORRT_FRONT_ENDS if backend == "tensorrt" else None,
    )
    if (refusal := wide_flag_error(args.wide_threads, sizing, args.front_ends)) is not None:
        log.error("%s", refusal)
        return 2
    # Spinning burns CFS quota while it waits: under a CPU limit, threads sleep at once.
    spinning = args.intra_op_spinning and cpus.quota is None
    if sizing.front_ends > 1 and not is_front_end():
        log.info(
            "%d front ends, each %d instances of %d ONNX Runtime threads (usable cores %d,"
            " CPU quota %s)",
            sizing.front_ends,
            sizing.instances,
            sizing.intra_op_threads,
            cpus.cores,
            "none" if cpus.quota is None else f"{cpus.quota:g}",
        )
        share_readings(model)  # every front end decides on the wide session from one reading
        with (
            reserve_port(args.host, args.http_port) as http_port,
            reserve_port(args.host, args.grpc_port) as grpc_port,
        ):
            front_ends = FrontEnds(
                [
                    *sys.argv[1:],
                    *("--front-ends", str(sizing.front_ends)),
                    *("--instances", str(sizing.instances)),
                    *("--intra-op-threads", str(sizing.intra_op_threads)),
                    *("--http-port", str(http_port), "--grpc-port", str(grpc_port)),
                ],
                sizing.front_ends,
            )
            labels = (args.model_name, args.revision, precision, backend)
            return front_ends.run(args.host, args.metrics_port, labels)
    if is_front_end():
        # Stopped while loading (the pod deleted at once): nothing was served, a clean exit.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: sys.exit(0))
        follow_the_supervisor()
    log.info(
        "ONNX Runtime: %d instances of %d threads, spinning %s (usable cores %d, CPU quota %s)",
        sizing.instances,
        sizing.intra_op_threads,
        "on" if spinning else "off",
        cpus.cores,
        "none" if cpus.quota is None else f"{cpus.quota:g}",
    )
    intra_op_threads = sizing.intra_op_threads
    wide, board = plan_wide(sizing, cpus.cores, args.wide_threads, model, backend)

    # Imported here: the metrics, transports and uvloop are only needed once the flags are good.
    import uvloop

    from .dataplane import DataPlane, ServeConfig
    from .metrics import Labels, ServeMetrics
    from .server import ServerOptions, ServingProcess

    try:
        loaded = load_backend(
            backend,
            model,
            fallback_model=fallback_model,
            cpu_fallback=args.cpu_fallback,
            intra_op_threads=intra_op_threads,
            spinning=spinning,
            sessions=sizing.instances,
            wide_threads=wide,
            board=board,
        )
    except Exception as e:  # nothing to serve: exit non-zero so the pod shows the failure
        log.error("cannot load %s with the %s backend: %s: %s", model, backend, type(e).__name__, e)
        _write_termination_message(e)
        return 1
    config = ServeConfig(
        model_name=args.model_name,
        revision=args.revision,
        precision=precision,
        requested_backend=backend,
        fallback_model=fallback_model,
        cpu_fallback=args.cpu_fallback,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        request_timeout_ms=args.request_timeout_ms,
        intra_op_threads=intra_op_threads,
        intra_op_spinning=spinning,
        instances=sizing.instances,
        run_on_loop=args.run_on_loop,
        warmup=args.warmup,
    )
    metrics = ServeMetrics(Labels(args.model_name, args.revision, precision, loaded.backend.name))
    metrics.enable_gpu_metrics()
    options = ServerOptions(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=None if is_front_end() else args.metrics_port,
        reuse_port=is_front_end(),
        front_ends=sizing.front_ends,
        max_body_bytes=args.max_body_bytes,
        body_timeout_seconds=args.body_timeout_seconds,
        drain_seconds=args.drain_seconds,
        http_server=args.http_server,
        grpc_server=args.grpc_server,
        max_connections=max(1024, 4 * args.max_queue_size),
    )

    async def main() -> None:
        dataplane = DataPlane(config, loaded, metrics)
        dataplane.board = board
        if args.sample_dir is not None:
            dataplane.sampler = _sampler(args, sizing.front_ends, metrics.registry)
            dataplane.sampler.start()
        try:
            await _serve(dataplane)
        finally:
            if dataplane.sampler is not None:
                await dataplane.sampler.close()

    async def _serve(dataplane: DataPlane) -> None:
        if not args.shadow_url or args.shadow_percent <= 0:
            await ServingProcess(dataplane, options).run()
            return
        from .shadow import ShadowMetrics, ShadowSender, http_sender

        send, close = http_sender(args.shadow_url, args.revision)
        dataplane.shadow = ShadowSender(
            send,
            ShadowMetrics(args.model_name, args.revision, metrics.registry),
            percent=args.shadow_percent,
            queue_size=args.shadow_queue_size,
        )
        dataplane.shadow.start()
        try:
            await ServingProcess(dataplane, options).run()
        finally:
            await dataplane.shadow.close()
            await close()

    uvloop.run(main())
    return 0
