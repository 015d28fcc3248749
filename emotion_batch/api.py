"""The Python API: `emotion_batch.analyze(paths, ...)` returns the per-frame table as a pandas DataFrame.

With `out=`, the same call is the command's incremental run: results, summary and charts written beside `out`,
the state store remembering finished files (a rerun analyses only new, changed or failed ones), resume after
an interruption, and the output's lock. The command and this function share one driver (`batch.run`), so a
notebook and a cron job produce the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .analysis import FileResult
from .batch.executors import ExecutorPlan
from .batch.incremental import OutputPaths
from .batch.job import ConfigError, Job, Options, PathLike, make_executor, prepare
from .batch.run import run_in_memory, run_incremental
from .defaults import DEFAULT_BIN_S
from .output.progress import TqdmProgress

__all__ = [
    "ConfigError",
    "ExecutorPlan",
    "FileResult",
    "Job",
    "Options",
    "analyze",
    "make_executor",
    "prepare",
]


def _options(options: dict[str, object]) -> Options:
    for key in ("include", "exclude"):
        value = options.get(key)
        if isinstance(value, str):
            options[key] = (value,)
        elif isinstance(value, (list, tuple)):
            options[key] = tuple(value)
    try:
        return Options(**options)  # type: ignore[arg-type]  # checked by the dataclass: TypeError below
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def analyze(
    paths: PathLike | Sequence[PathLike],
    *,
    progress: bool = True,
    out: PathLike | None = None,
    force: bool = False,
    bin_s: float = DEFAULT_BIN_S,
    **options: object,
) -> pd.DataFrame:
    """Analyse files and folders; return one row per face per sampled frame (see `schema.Row`).

    Keyword options are the fields of `Options` (fps, every, start, end, max_frames, detector, detector_model,
    model, min_face, score_threshold, annotate, workers, include, exclude, file_timeout, max_pixels, isolate,
    scheduler). The per-file summary is attached as `df.attrs["summary"]` and the timeline table (each person's
    emotion mix per `bin_s` seconds, `output.timeline.timeline_table`) as `df.attrs["timeline"]`. Raises
    `ConfigError` when the run cannot start; problems with single files are recorded in the summary instead.

    With `out` (a .csv or .parquet path), the run is incremental like the command's: the results, summary
    (`<stem>_summary`) and charts (`<stem>_charts/`) are written there, files already done with the same
    settings are kept, and the returned rows are the whole of `out`. `force` analyses every file again. Raises
    `batch.locking.LockHeld` while another run writes `out`, and `batch.incremental.SettingsChanged` when its
    rows were made with other settings.
    """
    from .output.timeline import timeline_table

    path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    opts = _options(dict(options))
    bar = TqdmProgress() if progress else None
    if out is None:
        outcome = run_in_memory(prepare(path_list, opts), bar)
        rows = outcome.rows
        rows.attrs["summary"] = outcome.summary
        durations = dict(zip(outcome.summary["source"], outcome.summary["duration_s"]))
        rows.attrs["timeline"] = timeline_table(rows, bin_s, durations)
        return rows
    outputs = OutputPaths.for_out(Path(out), bin_s=bin_s)
    result = run_incremental(
        lambda o: prepare(path_list, opts, ignore=o.ignored()), outputs, force=force, progress=bar
    )
    from .batch.shards import read_output

    rows = read_output(outputs.out)
    rows.attrs["summary"] = result.table
    durations = dict(zip(result.table["source"], result.table["duration_s"]))
    rows.attrs["timeline"] = timeline_table(rows, bin_s, durations)
    return rows
