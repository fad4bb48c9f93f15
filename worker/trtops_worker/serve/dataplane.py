"""The data plane: one model, its backend, the batcher and the metrics, shared by HTTP and gRPC.

Transports only translate bytes to calls on :class:`DataPlane` and :class:`ServeError` subclasses
to status codes (MLServer/KServe style). Readiness, CPU fallback while serving and request
accounting live here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .backend import Backend, LoadedBackend, load_onnxruntime
from .batching import Batcher, Key, batch_key
from .busy import BusyBoard
from .codec import select_outputs
from .errors import DeviceError, InvalidInput, ModelNotFound, NotReady, ServeError
from .metrics import ServeMetrics
from .model_info import (
    ServeConfig,
    body_limit,
    gather_statistics,
    model_config,
    publish_statistics,
    sample_input,
    shared_folder,
)
from .sampling import Sampler
from .shadow import ShadowSender
from .types import InferRequest, InferResponse, TensorSpec

__all__ = ["DataPlane", "ServeConfig"]

log = logging.getLogger(__name__)

SERVER_NAME = "trtops"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]

Decoder = Callable[[Sequence[TensorSpec], Sequence[str]], InferRequest]


class DataPlane:
    def __init__(self, config: ServeConfig, loaded: LoadedBackend, metrics: ServeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._backend: Backend = loaded.backend
        self._fallback_reason = loaded.fallback_reason
        self._switch_lock = threading.Lock()
        self.shadow: ShadowSender | None = None  # set by the server with --shadow-url
        self.sampler: Sampler | None = None  # set by the server with --sample-dir
        # The pod's front ends' busy flags (serve/busy.py), set from the requests in progress:
        # the backend's wide session runs only while no other front end has any.
        self.board: BusyBoard | None = None
        # Requests in flight, shadow copies too: the one count (the busy board reads it, the
        # metrics flush when it drops to 0).
        self._active = 0
        self._ready = False
        self._loaded = False  # warmed up; stays true while draining so late requests still succeed
        self.warmup_status = "pending"  # done | off | skipped: why (model metadata and the log)
        self._warming = False  # warm-up runs are no batches: trtops_wide_runs_total skips them
        self._publisher: asyncio.Task[None] | None = None
        metrics.set_backend(self._backend.name, fallback=self._fallback_reason is not None)
        batchable = all(
            s.shape and s.shape[0] == -1 for s in (*self._backend.inputs, *self._backend.outputs)
        )
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=config.max_batch_size,
            max_queue_delay_us=config.max_queue_delay_us,
            max_queue_size=config.max_queue_size,
            batchable=batchable,
            instances=min(config.instances, self._backend.max_concurrent_runs),
            observer=metrics,
            on_loop=config.run_on_loop and self._backend.name == "onnxruntime",
            cpu_clock=self._cpu_seconds,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher and warm the backend up; ready only afterwards."""
        self.batcher.start()
        self.metrics.start_flushing()
        if shared_folder() is not None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_statistics())
        await asyncio.get_running_loop().run_in_executor(None, self.warmup)
        self._loaded = self._ready = True
        log.info(
            "model %s version %s ready on %s (%s)",
            self.config.model_name,
            self.config.version,
            self._backend.name,
            "CPU fallback" if self._fallback_reason else "as requested",
        )

    def warmup(self) -> None:
        """Run batch 1 and the largest batch once, so first requests don't pay allocation costs.

        The inputs are samples valid for every datatype (zeros, false, the text "0"); a model
        that refuses them (a lookup without a row 0, a parser wanting other text) is served
        anyway: the skip is logged and reported as model metadata ``parameters.warmup``.
        """
        if not self.config.warmup:
            self.warmup_status = "off"
            return
        sizes = sorted({1, self.batcher.max_batch_size if self.batcher.batching else 1})
        # every session of the backend, not only the one the timed run below takes
        warm_every_session = getattr(self._backend, "warm_up", None)
        self._warming = True
        try:
            for rows in sizes:
                inputs = {s.name: sample_input(s, rows) for s in self._backend.inputs}
                if warm_every_session is not None:
                    warm_every_session(inputs)
                started = time.perf_counter()
                self._run_batch(inputs)
                if rows == sizes[-1]:  # the largest batch, warm: where batches start to run
                    self.batcher.note_run(time.perf_counter() - started)
        except ServeError as e:
            self.warmup_status = f"skipped: batch of {rows} refused: {e}"
            log.warning("warm-up %s; serving without it", self.warmup_status)
            return
        finally:
            self._warming = False
        self.warmup_status = "done"

    def stop_accepting(self) -> None:
        """Not ready from now on (SIGTERM): load balancers stop sending, in-flight work finishes."""
        self._ready = False

    async def close(self) -> None:
        """Finish queued requests, then release the backend (after the transports have stopped)."""
        self._ready = False
        if self._publisher is not None:
            self._publisher.cancel()
        await self.batcher.close()
        self.metrics.stop_flushing()
        self._backend.close()

    # -- health and metadata ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def _check(self, name: str, version: str | None) -> None:
        if name != self.config.model_name or (version not in (None, "", self.config.version)):
            # Triton's wording: its clients and examples look for this prefix
            shown = f"'{name}'" if not version else f"'{name}' version {version}"
            raise ModelNotFound(
                f"Request for unknown model: {shown} is not found"
                f" (this server serves '{self.config.model_name}' version {self.config.version})"
            )

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self._check(name, version)
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def fallback_reason(self) -> str | None:
        return self._fallback_reason

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        self._check(name, version)
        backend = self._backend
        parameters: dict[str, Any] = {
            "backend": backend.name,
            "requested_backend": self.config.requested_backend,
            "fallback": self._fallback_reason is not None,
            "revision": self.config.revision,
            "precision": self.config.precision,
            "warmup": self.warmup_status,
            "wide_threads": getattr(backend, "wide_threads", 0),
            **self.batcher.describe(),
        }
        if self._fallback_reason:
            parameters["fallback_reason"] = self._fallback_reason
        return {
            "name": self.config.model_name,
            "versions": [self.config.version],
            "platform": backend.platform,
            "inputs": [s.as_json() for s in backend.inputs],
            "outputs": [s.as_json() for s in backend.outputs],
            "parameters": parameters,
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration for what this server really does (model_info.py)."""
        self._check(name, version)
        return model_config(self.config, self._backend, self.batcher)

    def body_limit(self) -> int:
        """The default request size limit in bytes: a full batch as JSON (model_info.py)."""
        return body_limit(self._backend, self.batcher)

    def model_statistics(self, name: str = "", version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension from the server's counters (every model when ``name``
        is empty: the one served). With several front ends, every front end's counts: each
        publishes its own to the shared folder at least once a second (and the one answering,
        right now), and the answer adds them up."""
        if name:
            self._check(name, version)
        return gather_statistics(self._own_statistics())

    def _own_statistics(self) -> dict[str, Any]:
        own = self.metrics.statistics.as_json(self.config.model_name, self.config.version)
        publish_statistics(own)
        return own

    async def _publish_statistics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._own_statistics()

    # -- inference -------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Decoder,
        started: float | None = None,
        *,
        shadow: bool = False,
    ) -> tuple[InferResponse, InferRequest]:
        """Validate, queue, run, and account for one request; raises :class:`ServeError`.

        ``shadow``: a copy another revision sent (serve/shadow.py): left out of the request
        metrics, so it never counts in this revision's latency and error SLOs, and never
        shadowed again. Other requests are offered to :attr:`shadow` once answered."""
        started = time.perf_counter() if started is None else started
        if shadow:
            self._begin()
            try:
                response, request, _ = await self._answer(name, version, decode)
            finally:
                self._end()
            return response, request
        labels = self.metrics.request_started()
        self._begin()
        outcome = "server_error"
        try:
            response, request, outputs = await self._answer(name, version, decode)
            outcome = "success"
            if self.shadow is not None:
                self.shadow.offer(request.inputs, outputs)
            if self.sampler is not None:  # shadow copies return above: never sampled
                self.sampler.offer(request.inputs)
            return response, request
        except ServeError as e:
            outcome = e.outcome
            raise
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            outcome = "cancelled"
            raise
        finally:
            self._end()
            seconds = time.perf_counter() - started
            self.metrics.request_finished(labels, seconds, outcome, idle=self._active == 0)

    def _begin(self) -> None:
        self._active += 1
        if self._active == 1 and self.board is not None:
            self.board.mark(True)

    def _end(self) -> None:
        self._active -= 1
        if self._active == 0 and self.board is not None:
            self.board.mark(False)

    async def _answer(
        self, name: str, version: str | None, decode: Decoder
    ) -> tuple[InferResponse, InferRequest, dict[str, np.ndarray]]:
        """Decode, check, queue and run one request: its response, the request, and every
        output the model computed (the shadow compares them all)."""
        with self.batcher.arriving():
            if not self._loaded:
                raise NotReady("model is not loaded yet")
            self._check(name, version)
            backend = self._backend
            request = decode(backend.inputs, [o.name for o in backend.outputs])
            key = self._check_rows(request)
        # no await between leaving `arriving` and queueing: the batcher never sees a gap
        timeout_s = self.config.request_timeout_ms / 1000
        outputs = await self.batcher.submit(request.inputs, timeout_s, key)
        response = InferResponse(
            model_name=self.config.model_name,
            model_version=self.config.version,
            outputs=select_outputs(outputs, request.outputs),
            id=request.id,
        )
        return response, request, outputs

    def _check_rows(self, request: InferRequest) -> tuple[Key | None, int] | None:
        """Refuse a request bigger than a batch (Triton's rule and wording): run whole, it
        would take the memory and the time of many batches, past every limit set for one.
        Returns its :func:`batch_key` when batching (the batcher takes it: computed once)."""
        batcher = self.batcher
        if not batcher.batching:
            return None
        key, rows = batch_key(request.inputs)
        if rows > batcher.max_batch_size:
            raise InvalidInput(
                f"inference request batch-size must be <= {batcher.max_batch_size}"
                f" for '{self.config.model_name}' (got {rows})"
            )
        return key, rows

    def record_failure(self, started: float, error: ServeError) -> None:
        """Account for a request a transport refused before it reached :meth:`infer`."""
        labels = self.metrics.request_started()
        seconds = time.perf_counter() - started
        self.metrics.request_finished(labels, seconds, error.outcome, idle=self._active == 0)

    def arriving(self) -> contextlib.AbstractContextManager[None]:
        """Hold while reading a request body, so the batcher waits for it to join a batch."""
        return self.batcher.arriving()

    def _cpu_seconds(self) -> float:
        """The batcher's inference CPU clock: this thread's, plus the backend's own threads'
        where it counts them (ONNX Runtime's wide session)."""
        clock = getattr(self._backend, "cpu_seconds", None)
        return clock() if clock is not None else time.thread_time()

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs in the batcher's worker thread; falls back to the CPU if the device fails."""
        backend = self._backend
        try:
            outputs = backend.infer(inputs)
            if getattr(backend, "last_run_wide", False) and not self._warming:
                self.metrics.wide_run()
            return outputs
        except DeviceError as e:
            if not self._fall_back(backend, e):
                raise
        return self._backend.infer(inputs)

    def _fall_back(self, failed: Backend, error: Exception) -> bool:
        config = self.config
        if not config.cpu_fallback or config.fallback_model is None or failed.name == "onnxruntime":
            return False
        with self._switch_lock:
            if self._backend is failed:  # another batch may have switched already
                reason = f"{failed.name} backend failed while serving: {error}"
                log.error("%s; falling back to ONNX Runtime on %s", reason, config.fallback_model)
                self._backend = load_onnxruntime(
                    config.fallback_model,
                    intra_op_threads=config.intra_op_threads,
                    spinning=config.intra_op_spinning,
                    sessions=config.instances,
                )
                self._fallback_reason = reason
                self.metrics.set_backend(self._backend.name, fallback=True)
                try:
                    failed.close()
                except Exception as close_error:  # the device is already broken; nothing to save
                    log.warning("closing the failed backend: %s", close_error)
        return True
