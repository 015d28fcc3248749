"""Running the same per-file tasks on a Dask cluster (`--scheduler ADDRESS`, the `dask` extra).

Dask's `Client.get_executor()` is a `concurrent.futures.Executor`, so the cluster plugs into the very code path
the local worker pool uses: the same `process_file` tasks, the results sent back to this process, and the state
store, shards, lock and resume handled here exactly as in a local run. The cluster's workers must see the input
files, the model and the detector at the same paths (a shared filesystem). Each worker thread loads the model
and detector once, on its first file; start workers with `--nthreads 1` so that is once per worker process.

Differences from local workers: `--file-timeout` is not enforced on the cluster (a Dask worker cannot stop a
running task), a worker that dies is restarted by its nanny and its file retried by the scheduler (the file is
recorded as crashed only when it keeps killing workers), and a stop signal cancels running tasks as well as
queued ones (concurrent.futures cannot tell them apart), so those files are simply redone by the next run.
"""

from __future__ import annotations

import logging
import os

from ..analysis import Settings
from .executors import ExecutorPlan

log = logging.getLogger("emotion_batch")

#: Environment variable naming the scheduler, like the --scheduler option.
SCHEDULER_ENV = "EMOTION_BATCH_SCHEDULER"


class ClusterUnavailable(Exception):
    """The Dask cluster cannot be used; the message says why and what to do."""


def dask_executor(address: str, settings: Settings) -> ExecutorPlan:
    """An executor plan sending each file's task to the Dask scheduler at `address`."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise ClusterUnavailable("--scheduler needs Dask: pip install 'emotion-batch[dask]'") from exc
    try:
        # The connection timeout is Dask's own setting (distributed.comm.timeouts.connect, default 30 s; e.g.
        # DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s), like every other Dask tool.
        client = Client(address, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailable(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    threads = sum(client.nthreads().values())
    if not threads:
        log.warning("the Dask cluster at %s has no workers yet; files wait until workers join", address)
    for path, what in ((settings.model.path, "model"), (settings.detector.path, "detector")):
        if not os.path.isabs(path):
            raise ClusterUnavailable(f"the {what} path {path} must be absolute for cluster workers")
    log.info("sending files to the Dask cluster at %s (%d worker thread(s))", address, threads)
    # pure=False: every run analyses the files as they are now, never a result cached under the same arguments.
    executor = client.get_executor(pure=False)
    return ExecutorPlan(executor, None, window=max(4, 2 * threads), on_close=client.close)
