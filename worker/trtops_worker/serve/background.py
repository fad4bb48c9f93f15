"""One background task per object, off the request path: the shadow sender and the request
sampler each drain a bounded queue in one (serve/shadow.py, serve/sampling.py)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """Runs ``self._run()`` as one task on the running event loop: :meth:`start` starts it
    (once), :meth:`stop_loop` cancels it and waits until it is gone."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
