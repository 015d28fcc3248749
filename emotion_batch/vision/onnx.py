"""The one way this package opens an ONNX model: a single-threaded onnxruntime session on the CPU.

Parallelism comes from worker processes, not from threads fighting over the same cores, and onnxruntime's own
warnings would clutter cron logs, so every session is built here with the same options.
"""

from __future__ import annotations

import onnxruntime as ort


def inference_session(model: str | bytes) -> ort.InferenceSession:
    """A session on `model` (a file path, or the serialized model), one thread, errors-only logging."""
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
