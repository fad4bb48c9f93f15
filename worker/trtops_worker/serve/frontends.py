"""Several server processes ("front ends") on one pod's ports, so one event loop is not the cap.

One Python event loop spends ~170 us of CPU per binary request (BENCHMARKS.md, "Serving"): it
caps a pod near 5.5k requests/s however many cores compute behind it. So ``serve`` with
``--front-ends N`` (N > 1) becomes a small supervisor that

- starts N copies of itself, each a complete server (event loop, batcher, its own ONNX Runtime
  sessions or TensorRT execution context) listening on the same HTTP and gRPC ports with
  ``SO_REUSEPORT``: the kernel spreads connections over them;
- serves the metrics port itself, from prometheus_client's multiprocess mode: every front end
  writes its samples to a file under a private folder, and one scrape sums them (counters and
  histograms add; the in-flight and queue gauges add over live processes; nothing is counted
  twice);
- on SIGTERM/SIGINT forwards the signal to every front end, waits until all have drained, and
  exits 0; if one front end dies on its own it stops the others and exits 1, so the pod restarts
  whole rather than serving on part of its cores; a front end whose supervisor dies (even
  by SIGKILL) drains and exits too, rather than serving on as an orphan.

The front ends are the same command line with the sizing made explicit and the ports fixed,
marked by ``TRTOPS_FRONT_END`` in their environment. Each warms up first and all start listening
together once every one is warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FRONT_END_ENV",
    "FrontEnds",
    "all_warm",
    "bound_socket",
    "follow_the_supervisor",
    "is_front_end",
    "reserve_port",
]

log = logging.getLogger(__name__)

FRONT_END_ENV = "TRTOPS_FRONT_END"  # set in a front end's environment to its index
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
SUPERVISOR_ENV = "TRTOPS_SUPERVISOR_PID"  # a front end's parent, to notice it is gone
_PR_SET_PDEATHSIG = 1  # prctl(2): a signal for this process when its parent dies


def follow_the_supervisor() -> None:
    """In a front end: SIGTERM (a drain, then exit) when the supervisor dies, even by SIGKILL.
    Orphans kept serving on the pod's ports, sharing them (``SO_REUSEPORT``) with a restarted
    server's front ends, wherever the supervisor is not the last process of its namespace
    (a shared process namespace, an init in front of it, a run outside a container)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to ask
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(SUPERVISOR_ENV, str(os.getppid())):
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the request above


def is_front_end() -> bool:
    return FRONT_END_ENV in os.environ


async def all_warm(count: int, stopping: Callable[[], bool]) -> None:
    """Mark this front end warm, then wait until all ``count`` are (or a stop comes).

    The front ends then start listening together, so the pod turns ready only once every one
    of them takes connections, not while some still load (half the capacity behind a ready pod).
    """
    folder = Path(os.environ[MULTIPROC_ENV])
    (folder / f"warm-{os.environ[FRONT_END_ENV]}").touch()
    while len(list(folder.glob("warm-*"))) < count and not stopping():
        await asyncio.sleep(0.05)


def bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening), closed again if the bind fails
    (OSError). ``reuse_port``: ``SO_REUSEPORT``, so the pod's front ends share the port. Always
    ``SO_REUSEADDR``: a container restarted in the same pod binds again while the connections
    its predecessor closed sit in TIME_WAIT. An IPv6 host takes IPv4 too (dual stack)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """A port for the front ends to share: ``port``, or a free one when it is 0.

    The reserving socket is bound with ``SO_REUSEPORT`` but never listens, so it takes no
    connections; it only keeps the number ours until the front ends have bound it too.
    """
    with bound_socket(host, port, reuse_port=True) as sock:
        yield sock.getsockname()[1]


@dataclass
class FrontEnds:
    """The supervisor: ``count`` front ends running ``argv`` (``serve``'s arguments)."""

    argv: Sequence[str]
    count: int

    def run(self, metrics_host: str, metrics_port: int, backend_labels: tuple[str, ...]) -> int:
        folder = tempfile.mkdtemp(prefix="trtops-metrics-")
        os.environ[MULTIPROC_ENV] = folder  # before prometheus_client is first imported
        try:
            return self._run(folder, metrics_host, metrics_port, backend_labels)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _run(
        self, folder: str, metrics_host: str, metrics_port: int, backend_labels: tuple[str, ...]
    ) -> int:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        from .metrics import Labels, ServeMetrics

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        # GPU gauges are read at scrape time, once for the pod, here.
        ServeMetrics(Labels(*backend_labels), registry=CollectorRegistry()).enable_gpu_metrics(
            registry
        )
        metrics_server, _ = start_http_server(metrics_port, addr=metrics_host, registry=registry)

        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            for p in children:
                if p.poll() is None:
                    p.send_signal(signum)

        children: list[subprocess.Popen[bytes]] = []
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                env = {
                    **os.environ,
                    FRONT_END_ENV: str(index),
                    MULTIPROC_ENV: folder,
                    SUPERVISOR_ENV: str(os.getpid()),
                }
                children.append(
                    subprocess.Popen([sys.executable, "-m", "trtops_worker", *self.argv], env=env)
                )
            log.info("%d front ends started: pids %s", self.count, [p.pid for p in children])
            failed = self._watch(children, lambda: stopping)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for p in children:  # only left running if this process itself failed
                if p.poll() is None:
                    p.kill()
                    p.wait()
            metrics_server.shutdown()
            metrics_server.server_close()
        return 1 if failed else 0

    def _watch(self, children: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> bool:
        """Wait until every front end exits; True if one failed or exited before a stop."""
        from prometheus_client import multiprocess

        failed = False
        alive = set(children)
        while alive:
            time.sleep(0.1)
            for p in list(alive):
                if p.poll() is None:
                    continue
                alive.discard(p)
                # its live gauges leave the sums
                multiprocess.mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                if p.returncode != 0 or not stopping():
                    failed = True
                    log.error("front end pid %d exited with %d", p.pid, p.returncode)
                    for other in alive:  # the pod restarts whole, not on part of its cores
                        other.send_signal(signal.SIGTERM)
        return failed
