"""granian (a Rust HTTP server) in this process's event loop, as an opt-in HTTP front end.

``--http-server granian-asgi`` runs :func:`rest.asgi_app`, ``granian-rsgi`` runs
:func:`rest.rsgi_app` (the same handler over granian's own interface) in granian's
embedded server: its Rust runtime thread parses HTTP and hands each request to this loop. It is
not the default: measured side by side with uvicorn it did not spend clearly less CPU per
request (BENCHMARKS.md, "HTTP front ends"; ``bench/serve_http_servers.py``). granian is not in the
worker image; ``pip install granian`` (the dev extra has it).

granian binds its listener with ``SO_REUSEPORT`` always, so several front ends share a port as
with uvicorn's ``--front-ends``; a port of 0 is first reserved (:func:`frontends.reserve_port`)
so that the number is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .frontends import reserve_port

__all__ = ["start_granian"]


async def start_granian(
    app: Any, *, rsgi: bool, host: str, port: int, backlog: int, graceful_timeout_s: float
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Serve ``app`` (RSGI if ``rsgi``, else ASGI) on ``host:port``; returns the port and a
    coroutine function that stops taking connections, lets requests in progress finish (at most
    ``graceful_timeout_s``) and returns. OSError if it does not listen within 10 s."""
    try:
        from granian.constants import HTTPModes, Interfaces
        from granian.server.embed import Server
    except ImportError as e:
        raise RuntimeError(f"--http-server granian-*: granian is not installed ({e})") from None
    reservation = contextlib.ExitStack()
    port = reservation.enter_context(reserve_port(host, port))
    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.RSGI if rsgi else Interfaces.ASGINL,
        http=HTTPModes.http1,
        websockets=False,
        log_enabled=False,
        backlog=backlog,
    )
    task = asyncio.create_task(server.serve(), name="trtops-http")

    async def stop() -> None:
        server.stop()  # type: ignore[no-untyped-call]
        try:
            await asyncio.wait_for(task, graceful_timeout_s)
        finally:
            reservation.close()

    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104
    deadline = time.monotonic() + 10
    while not await _accepts(probe, port):
        if task.done() or time.monotonic() > deadline:
            await stop()
            raise OSError(f"granian on {host}:{port} did not start")
        await asyncio.sleep(0.01)
    return port, stop


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port, family=socket.AF_UNSPEC)
    except OSError:
        return False
    writer.close()
    return True
