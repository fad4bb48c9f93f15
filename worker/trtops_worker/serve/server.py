"""Process lifecycle: metrics, HTTP and gRPC listeners around one data plane, and graceful stop.

Order matters for zero failed requests while a Deployment rolls:

- start: listeners come up first (liveness answers, readiness says 400), then the warm-up runs,
  then readiness turns 200 (a front end sharing the ports with others warms up first and then
  listens, see frontends.py);
- stop (SIGTERM/SIGINT): readiness turns 400 at once, the server keeps serving for
  ``drain_seconds`` (endpoints and load balancers catch up), then the listeners stop taking new
  connections, in-flight and queued requests finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

import grpc
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .dataplane import DataPlane
from .frontends import all_warm, bound_socket
from .grpc_server import create_grpc_server
from .http11 import HttpOptions, start_http11
from .rest import asgi_app, create_handler, rsgi_app

__all__ = ["ServerOptions", "ServingProcess"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "0.0.0.0"  # noqa: S104  # a pod serves its own IP; tests pass 127.0.0.1
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int | None = 8002  # None: a front end; its supervisor serves the metrics
    max_body_bytes: int | None = None  # None: sized from the model (DataPlane.body_limit)
    body_timeout_seconds: float = 30.0
    drain_seconds: float = 0.0
    graceful_timeout_seconds: float = 30.0
    max_connections: int = 1024
    # SO_REUSEPORT on the HTTP socket (gRPC sets it by default): front ends share the port.
    reuse_port: bool = False
    front_ends: int = 1  # with reuse_port: how many share the ports
    # "httptools": serve/http11.py; or the same handler under "uvicorn" (uvloop + httptools,
    # ASGI), or granian (Rust) over its "granian-asgi" or "granian-rsgi" interface.
    http_server: str = "httptools"
    # "h2" (serve/grpc_h2.py) or "grpcio" (grpc.aio); None: env TRTOPS_GRPC_SERVER, else h2
    grpc_server: str | None = None


# Young objects collected once this many more are allocated than freed (CPython's default:
# 700). Requests in flight keep a few hundred objects alive at a time, so at 700 a collection
# ran every ~40 requests and promoted them to older generations, each later full collection
# walking the whole heap: ~10% of the serving CPU of a tiny model (bench/serve_before_after.py).
GC_YOUNG_THRESHOLD = 10_000


@contextlib.contextmanager
def _settled_heap() -> Generator[None, None, None]:
    """While serving, once warm: keep the objects made while starting (models, modules) out of
    every collection, and collect young objects less often (:data:`GC_YOUNG_THRESHOLD`); the
    process's own settings come back afterwards (a test process runs servers one by one)."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: this process decides the shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _OneWrite:
    """A transport that sends a response head together with the body after it.

    uvicorn writes the status line and headers, then the body, in two ``write`` calls: two
    system calls and two TCP segments per response, the second waking the client again. Here a
    head (a write ending in a blank line) waits for the next write; whatever is left is flushed
    on the loop's next round (a HEAD answer, a 100 Continue) or before the transport closes.
    Everything else goes straight to the real transport.
    """

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head:
            data, self._head = self._head + data, b""
        elif bytes(data[-4:]) == b"\r\n\r\n":
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head:
            head, self._head = self._head, b""
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response in one piece (:class:`_OneWrite`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]


class ServingProcess:
    def __init__(self, dataplane: DataPlane, options: ServerOptions) -> None:
        self.dataplane = dataplane
        self.options = options
        self._stop = asyncio.Event()
        self.http_port = options.http_port
        self.grpc_port = options.grpc_port

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: not ready any more, draining in-flight requests")
            self.dataplane.stop_accepting()
            self._stop.set()

    async def run(self) -> None:
        opts = self.options
        metrics_server = None
        if opts.metrics_port is not None:
            metrics_server, _ = self.dataplane.metrics.serve(opts.host, opts.metrics_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        body_limit = opts.max_body_bytes or self.dataplane.body_limit()
        if opts.reuse_port:
            # One of several front ends: listen only once all are warm, so the kernel never
            # hands one a connection it would answer "not ready", and the pod turns ready with
            # all of them taking connections.
            await self.dataplane.start()
            await all_warm(opts.front_ends, self._stop.is_set)
            if self._stop.is_set():
                await self.dataplane.close()
                return
        grpc_server, self.grpc_port = create_grpc_server(
            self.dataplane,
            f"{opts.host}:{opts.grpc_port}",
            max_message_bytes=body_limit,
            reuse_port=opts.reuse_port,
            implementation=opts.grpc_server,
        )
        await grpc_server.start()
        stop_http: Callable[[], Awaitable[None]] | None = None
        try:
            self.http_port, stop_http = await self._start_http(body_limit)
            log.info(
                "listening: http %s:%d (%s) grpc %s:%d (%s) metrics %s:%s",
                opts.host,
                self.http_port,
                opts.http_server,
                opts.host,
                self.grpc_port,
                "grpcio" if isinstance(grpc_server, grpc.aio.Server) else "h2",
                opts.host,
                opts.metrics_port if opts.metrics_port is not None else "(the supervisor's)",
            )
            if not opts.reuse_port:
                await self.dataplane.start()
            with _settled_heap():
                await self._stop.wait()
                if opts.drain_seconds > 0:
                    await asyncio.sleep(opts.drain_seconds)
        finally:
            await asyncio.gather(
                stop_http() if stop_http is not None else asyncio.sleep(0),
                grpc_server.stop(opts.graceful_timeout_seconds),
                return_exceptions=True,
            )
            await self.dataplane.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            log.info("stopped")

    async def _start_http(self, body_limit: int) -> tuple[int, Callable[[], Awaitable[None]]]:
        """The HTTP listener: its port, and a coroutine function that stops it gracefully."""
        opts = self.options
        handle = create_handler(
            self.dataplane,
            max_body_bytes=body_limit,
            body_timeout_s=opts.body_timeout_seconds,
            max_requests=opts.max_connections,
        )
        if opts.http_server == "httptools":
            options = HttpOptions(
                max_body_bytes=body_limit,
                graceful_timeout_s=opts.graceful_timeout_seconds,
                backlog=opts.max_connections,
            )
            return await start_http11(
                handle, opts.host, opts.http_port, options, reuse_port=opts.reuse_port
            )
        if opts.http_server in ("granian-asgi", "granian-rsgi"):
            from .granian_server import start_granian

            rsgi = opts.http_server == "granian-rsgi"
            return await start_granian(
                rsgi_app(handle) if rsgi else asgi_app(handle),
                rsgi=rsgi,
                host=opts.host,
                port=opts.http_port,
                backlog=opts.max_connections,
                graceful_timeout_s=opts.graceful_timeout_seconds,
            )
        config = uvicorn.Config(
            asgi_app(handle),
            host=opts.host,
            port=opts.http_port,
            http=_HttpProtocol,
            lifespan="off",
            access_log=False,
            # No per-request work nobody reads: the gateway in front keeps client addresses.
            proxy_headers=False,
            server_header=False,
            date_header=False,
            log_level="warning",
            # No uvicorn-wide cap: it would refuse the kubelet's probes too. The app caps
            # requests other than probes (rest.create_handler's max_requests).
            limit_concurrency=None,
            timeout_graceful_shutdown=int(opts.graceful_timeout_seconds),
        )
        http = _Uvicorn(config)
        sockets = (
            [bound_socket(opts.host, opts.http_port, reuse_port=True)] if opts.reuse_port else None
        )
        task = asyncio.create_task(http.serve(sockets=sockets), name="trtops-http")
        while not http.started:
            if task.done():
                await task  # surfaces the bind error
                raise OSError(f"HTTP server on {opts.host}:{opts.http_port} did not start")
            await asyncio.sleep(0.01)

        async def stop() -> None:
            http.should_exit = True
            await task

        return http.servers[0].sockets[0].getsockname()[1], stop
