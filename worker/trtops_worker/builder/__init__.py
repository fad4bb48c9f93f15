"""The worker's ``build`` and ``compare`` commands: FP32 ONNX -> precision-converted ONNX
(``precision``) -> artifact (``engine`` with ``engine_onnxruntime`` / ``engine_tensorrt``) ->
accuracy gate (``accuracy``) -> self-benchmark (``benchmark``) -> content-addressed store
(``store``, keyed by :mod:`trtops_worker.cachekey`), orchestrated by ``pipeline``.

Failures are :class:`~trtops_worker.builder.errors.BuildError` subclasses (see ``errors`` for the
reasons and exit codes); ``result`` turns an outcome into the operator's termination message.
"""
