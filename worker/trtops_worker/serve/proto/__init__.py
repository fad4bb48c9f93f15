"""Generated OIP v2 gRPC stubs (``grpc_predict_v2.proto``), re-exported as ``Any``.

protobuf builds the message classes at import time, so static checkers cannot see them; the
serving code treats them as untyped and checks values itself.
"""

from __future__ import annotations

from typing import Any

from . import grpc_predict_v2_pb2 as _pb
from . import grpc_predict_v2_pb2_grpc as _pb_grpc

pb: Any = _pb
pb_grpc: Any = _pb_grpc

__all__ = ["pb", "pb_grpc"]
