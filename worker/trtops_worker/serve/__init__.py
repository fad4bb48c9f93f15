"""``trtops-worker serve``: an Open Inference Protocol v2 server (HTTP + gRPC) for one model.

Layers, outermost first: transports (:mod:`.rest`, :mod:`.grpc_server`) -> :class:`DataPlane`
(validation, readiness, fallback, accounting) -> :class:`~.batching.Batcher` -> a backend
(:mod:`.backend_onnxruntime`, :mod:`.backend_tensorrt`). Metrics live in :mod:`.metrics`.
"""

from __future__ import annotations

from .dataplane import DataPlane, ServeConfig
from .errors import ServeError
from .types import InferRequest, InferResponse, TensorSpec

__all__ = ["DataPlane", "InferRequest", "InferResponse", "ServeConfig", "ServeError", "TensorSpec"]
