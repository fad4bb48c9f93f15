"""trtops worker: builds ONNX models into engines (``build``, ``compare``), serves them over the
Open Inference Protocol v2 (``serve``) and drives load at them (``bench``)."""

__version__ = "0.1.0"
