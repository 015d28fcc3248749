"""Starting the process that local workers are forked from, as early as a run knows it will need workers.

The fork server (see `isolation`) imports OpenCV, onnxruntime, PyAV and the worker code once, about 0.3 s of
one core; workers forked from it are ready in milliseconds. The command starts it before importing its own
heavy modules (pandas, rich), so the two sets of imports run side by side on two cores instead of one after
the other; `api.prepare` starts it for API callers (a no-op when it already runs). This module imports only the
standard library and `isolation`, so starting the server costs the caller nothing.
"""

from __future__ import annotations

import os

from ..defaults import DECODER_THREADS_ENV
from .isolation import start_fork_server

#: What a worker needs, imported once by the fork server instead of by every worker. PyAV would otherwise be
#: imported on each worker's first video (about 50 ms); a module that is not installed is skipped.
WORKER_MODULES = ("emotion_batch.analysis", "av")


def worker_environment(max_pixels: int, workers: int) -> dict[str, str]:
    """Environment variables for local workers; the user's own settings of them win."""
    environment = {}
    if "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ:  # OpenCV's own limit, for formats not measured here
        environment["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)
    if workers > 1 and DECODER_THREADS_ENV not in os.environ:
        # Every worker already decodes in its own thread beside detection; FFmpeg's extra frame threads only
        # add hand-off overhead when the cores are busy (a third less decode CPU here, see sampling.py).
        environment[DECODER_THREADS_ENV] = "1"
    return environment


def start_worker_server(max_pixels: int, workers: int) -> None:
    """Start the fork server now, without waiting for its imports (OpenCV reads its pixel limit as it loads,
    so the server is started with the workers' environment)."""
    start_fork_server(WORKER_MODULES, worker_environment(max_pixels, workers))
