"""Incremental, restartable runs for one output: what the nightly cron job actually executes.

A run (1) checks that the settings match those the state store's rows were made with, (2) plans: files whose
identity (path, size, mtime, else sha256) matches a successful record are kept, everything else is analysed,
(3) analyses those files on an executor, committing each as it completes (shard file renamed into place, chart,
then one SQLite transaction), and (4) re-assembles `--out`, the summary and the overview chart from the state
store, atomically, in source order. A kill between any two steps loses at most the files in flight, which the
next run redoes; an interrupted run leaves the previous outputs untouched. Files that failed are retried on
every run, so a fixed permission or a finished copy is picked up without --force.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..analysis import FileResult, describe_settings, error_result, skipped_result
from ..files import PARTIAL_SUFFIX, TEMP_SUFFIX, atomic_path, file_digest, temp_prefix
from ..media.sources import FOLDER, Source
from ..output import charts, subtitles, thumbnails
from ..output import timeline as tables
from ..output.report import render_report, report_path
from ..output.sinks import PARQUET_SUFFIXES, OutputError, write_table
from ..output.timeline import DEFAULT_BIN_S, table_paths
from ..schema import rows_frame, summary_frame
from .drawing import Drawer
from .job import Job
from .shards import ShardStore, assemble, shard_name, shard_texts
from .state import FileRecord, StateError, StateStore, explain_change, fingerprint_of
from .tables import TableParts

log = logging.getLogger("emotion_batch")

STATE_SUFFIX = ".state"
#: Charts are drawn into a temporary file with this suffix, then renamed into place.
CHART_TEMP_SUFFIX = ".tmp.png"
#: A burst of results is committed together: at most this many files, none waiting longer than this (seconds).
BATCH_FILES = 64
BATCH_SECONDS = 0.5
#: The table formats --out and --summary may have, by extension.
TABLE_SUFFIXES = (".csv", *PARQUET_SUFFIXES)
#: The errors of a stat() that say a file is really gone; any other (EACCES, EIO, ESTALE...) may be transient.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})


def chart_name(source: str) -> str:
    """The timeline chart of a video in the charts folder: a flat name, short enough and unique per source."""
    return tables.safe_filename(source, ".timeline.png")


def check_table_format(path: Path, what: str) -> None:
    """Refuse, before any work, a table path whose extension is no supported format, or Parquet without pyarrow."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise OutputError(
            f"{what} {path} has {'the extension ' + path.suffix if path.suffix else 'no extension'}, which is no "
            "table format emotion-batch writes; the supported extensions are .csv and .parquet"
        )
    if suffix in PARQUET_SUFFIXES:
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise OutputError(
                f"{what} {path} is Parquet, which needs pyarrow, and pyarrow cannot be imported ({exc}); install "
                "the parquet extra (pip install 'emotion-batch[parquet]') or write .csv"
            ) from None


def gone(path: str | os.PathLike[str] | bytes) -> bool:
    """True only when `path` really does not exist (ENOENT, ENOTDIR), not when it cannot be looked at now."""
    try:
        os.lstat(path)
    except OSError as exc:
        return exc.errno in GONE_ERRNOS
    return False


@dataclass(frozen=True)
class OutputPaths:
    """Where one run writes: results, summary, charts, and the state folder (state store, shards, lock)."""

    out: Path
    summary: Path
    charts: Path | None
    state_dir: Path
    #: The minute-by-minute and per-person tables (`output.timeline`).
    timeline: Path
    tracks: Path
    #: The HTML report (None: --no-report), and the folder of WebVTT subtitles (None: no --subtitles).
    report: Path | None = None
    subtitles: Path | None = None
    #: Width of the timeline table's bins, in seconds.
    bin_s: float = DEFAULT_BIN_S

    @classmethod
    def for_out(
        cls,
        out: Path,
        summary: Path | None = None,
        charts: Path | None = None,
        no_charts: bool = False,
        *,
        report: bool = True,
        subtitles: bool = False,
        bin_s: float = DEFAULT_BIN_S,
    ) -> OutputPaths:
        out = Path(out)
        summary = summary or out.with_name(f"{out.stem}_summary{out.suffix}")
        charts_dir = None if no_charts else charts or out.with_name(f"{out.stem}_charts")
        timeline, tracks = table_paths(out)
        subtitles_dir = (charts_dir or out.with_name(f"{out.stem}_subtitles")) if subtitles else None
        return cls(
            out,
            Path(summary),
            charts_dir,
            out.with_name(out.name + STATE_SUFFIX),
            timeline,
            tracks,
            report_path(out) if report else None,
            subtitles_dir,
            float(bin_s),
        )

    @property
    def lock(self) -> Path:
        return self.state_dir / "lock"

    @property
    def database(self) -> Path:
        return self.state_dir / "state.sqlite3"

    @property
    def shards(self) -> Path:
        return self.state_dir / "shards"

    @property
    def pictures(self) -> Path:
        """Each file's track thumbnails as the worker cut them, copied into the charts folder when missing."""
        return self.state_dir / "thumbnails"

    def ignored(self) -> list[Path]:
        """Everything this run writes, never to be read back as input (outputs may sit in an input folder)."""
        extra = [p for p in (self.charts, self.report, self.subtitles) if p is not None]
        return [self.out, self.summary, self.state_dir, self.timeline, self.tracks, *extra]

    def check_writable(self) -> None:
        """Fail before any work when an output folder is missing or not writable, or a format unsupported."""
        check_table_format(self.out, "the results file")
        check_table_format(self.summary, "the summary file")
        for target in (self.out, self.summary):
            if target.is_dir():
                raise OutputError(f"output path is a folder, not a file: {target}")
        folders = list(dict.fromkeys([self.out.parent, self.summary.parent]))
        for folder in folders:
            if not folder.is_dir():
                if not folder.parent.is_dir():  # one missing level is a new folder; more is likely a typo
                    raise OutputError(
                        f"output folder does not exist: {folder} (nor its parent {folder.parent})"
                    )
                _make_folder(folder, "output folder")
            _probe(folder)
        for made, what in ((self.charts, "charts folder"), (self.subtitles, "subtitles folder")):
            if made is not None:
                _make_folder(made, what)
                _probe(made)

    def prepare_state_dir(self) -> None:
        _make_folder(self.shards, "state folder")
        _make_folder(self.pictures, "state folder")

    def remove_stale_temporaries(self) -> int:
        """Temporary files of runs that were killed (safe: we hold the lock, nobody else is writing)."""
        removed = 0
        places = [(p.parent, temp_prefix(p)) for p in (self.out, self.summary, self.timeline, self.tracks)]
        if self.report is not None:
            places.append((self.report.parent, temp_prefix(self.report)))
        if self.subtitles is not None and self.subtitles.is_dir():
            places.append((self.subtitles, "."))
        if self.charts is not None and self.charts.is_dir():
            places.append((self.charts, "."))
        for folder, prefix in places:
            for entry in folder.glob(prefix + "*"):
                if entry.name.endswith((TEMP_SUFFIX, CHART_TEMP_SUFFIX, PARTIAL_SUFFIX)) and entry.is_file():
                    entry.unlink(missing_ok=True)
                    removed += 1
        return removed


class SettingsChanged(Exception):
    """The state store's rows were made with other settings; the message says which and what to do."""


@dataclass
class Plan:
    """What this run will do with each input file."""

    process: list[Source] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    kept: int = 0
    skipped: int = 0
    #: Of `kept`: files that could not be looked at now (stat failed with EACCES, EIO...), kept as they were.
    unreadable: int = 0
    #: Earlier results kept though their files are not among this run's sources: under a folder that cannot be
    #: listed now, or outside this run's input paths (another root than before).
    held_unlisted: list[FileRecord] = field(default_factory=list)
    held_outside: list[FileRecord] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The plan as plain JSON, kept in the state store as `last_plan` (what the last run set out to do)."""
        out: dict[str, Any] = {
            "analysed": len(self.process),
            "reasons": dict(self.reasons),
            "kept": self.kept,
            "skipped": self.skipped,
        }
        for key, n in (
            ("kept_unreadable", self.unreadable),
            ("kept_unlisted", len(self.held_unlisted)),
            ("kept_outside_inputs", len(self.held_outside)),
        ):
            if n:
                out[key] = n
        return out

    def describe(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        parts = [f"analysing {len(self.process)} file(s)" + (f" ({why})" if why else "")]
        if self.kept:
            parts.append(f"{self.kept} unchanged file(s) kept from earlier runs")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (not media)")
        if self.held_unlisted:
            parts.append(
                f"{len(self.held_unlisted)} earlier result(s) kept under folder(s) that cannot be listed"
            )
        if self.held_outside:
            parts.append(f"{len(self.held_outside)} earlier result(s) kept from outside this run's inputs")
        return "; ".join(parts)


@dataclass
class Outcome:
    """How a run ended, for the final log lines and the exit code."""

    table: pd.DataFrame
    rows: int
    processed: int
    kept: int
    rewritten: bool = True


def _only_rows_format_differs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when two settings records differ in the rows format (the code's version of the rows) alone."""
    rest = {k: v for k, v in old.items() if k != "rows_format"}
    return old.get("rows_format") != new.get("rows_format") and rest == {
        k: v for k, v in new.items() if k != "rows_format"
    }


def _make_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the {what} {folder}: {exc.strerror or exc}") from exc


def _probe(folder: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".emotion-batch-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from exc


def _hash_file(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None


class IncrementalRun:
    """One run against one output's state store. Call `check_settings`, `plan`, `commit` per result, `finish`.

    The loop that produces the results is `run.drive`, the same for every caller."""

    def __init__(self, job: Job, paths: OutputPaths, state: StateStore) -> None:
        self.job = job
        self.paths = paths
        self.state = state
        self.shards = ShardStore(paths.shards)
        self.settings = describe_settings(job.settings)
        self.fingerprint = fingerprint_of(self.settings)
        self.drawer = Drawer(enabled=paths.charts is not None or paths.subtitles is not None)
        self._pending: list[FileResult] = []
        self._flushed_at = -math.inf
        self.plan_made: Plan | None = None
        self.table_parts = TableParts(paths.bin_s)
        self._queued: set[str] = set()  # sources whose chart and subtitles this run has queued already
        self._records: dict[str, FileRecord] | None = None  # the store's records as `plan` read them

    # 1. settings ----------------------------------------------------------------------------------------------
    def check_settings(self, force: bool) -> None:
        """Adopt the settings on a first run or with --force; refuse to mix them with other settings' rows."""
        stored = self.state.get_meta("fingerprint")
        if force or stored is None:
            if force and stored is not None:
                log.info("--force: every file is analysed again (%s)", self.paths.state_dir)
            self.state.reset(self.settings, self.fingerprint)
            return
        if stored != self.fingerprint:
            previous = self.state.get_meta("settings") or {}
            if _only_rows_format_differs(previous, self.settings):
                # Not a choice of the user's: this version cannot write the old format, and mixing the two would
                # give an inconsistent --out. Every file is analysed again, as --force would.
                log.warning(
                    "%s was made by another version of emotion-batch (rows format %s, this one writes %s): "
                    "every file is analysed again",
                    self.paths.out,
                    previous.get("rows_format", "unknown"),
                    self.settings["rows_format"],
                )
                self.state.reset(self.settings, self.fingerprint)
                return
            change = explain_change(previous, self.settings)
            raise SettingsChanged(
                f"{self.paths.out} holds rows made with other settings ({change}). Mixing rows from two "
                "models or samplings would make the results inconsistent, so nothing was done. Rerun with "
                "--force to analyse every file again with the new settings, or write to another --out."
            )

    # 2. plan ----------------------------------------------------------------------------------------------------
    def _unchanged(self, source: Source, rec: FileRecord, info: os.stat_result | None) -> bool:
        """`info`: the file's stat now (None: it could not be taken)."""
        ident = rec.identity
        if ident is None or info is None:
            return False
        if info.st_size != ident.size:
            return False
        if info.st_mtime_ns == ident.mtime_ns:
            return True
        # Same size, new mtime (touched, copied again): compare the content before redoing the work.
        if _hash_file(source.path) == ident.sha256:
            self.state.touch(rec.source, info.st_mtime_ns)
            return True
        return False

    def plan(self) -> Plan:
        records = self._records = self.state.records()
        plan = Plan()
        for source in self.job.sources:
            if source.skip_reason:
                plan.skipped += 1
                continue
            rec = records.get(source.source)
            if rec is None:
                reason = "new"
            elif rec.fingerprint != self.fingerprint:
                reason = "made with other settings"
            elif rec.status != "ok":
                reason = "failed before, retried"
            elif rec.path != os.fsencode(source.path):
                reason = "moved"
            elif (info := self._stat_now(source)) is False:
                plan.kept += 1  # a transient problem (permissions, I/O): the earlier result stands
                plan.unreadable += 1
                continue
            elif not self._unchanged(source, rec, info):
                reason = "changed"
            elif rec.shard is not None and not self.shards.intact(rec.shard, rec.shard_size):
                reason = "rows missing from the state folder"
            else:
                plan.kept += 1
                continue
            plan.process.append(source)
            plan.reasons[reason] += 1
        self._hold(plan, records)
        self.state.set_meta("roots", [str(r) for r in self.job.roots])
        self.plan_made = plan
        return plan

    def _stat_now(self, source: Source) -> os.stat_result | None | Literal[False]:
        """The file's stat; None when it is gone (ENOENT and the like); False (with a warning) when it exists
        but cannot be looked at now (EACCES, EIO, ESTALE...)."""
        try:
            return os.stat(source.path)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                return None
            log.warning(
                "%s: cannot look at the file now (%s); its earlier result is kept and it is checked again on the "
                "next run",
                source.source,
                exc.strerror or exc,
            )
            return False

    def _hold(self, plan: Plan, records: Mapping[str, FileRecord]) -> None:
        """Earlier results that stay in the outputs though this run did not list their files (see `Plan`)."""
        current = {s.source for s in self.job.sources}
        unlisted = [str(s.path) for s in self.job.sources if s.media_type == FOLDER]
        for name, rec in sorted(records.items()):
            if name in current or rec.status != "ok" or rec.fingerprint != self.fingerprint:
                continue
            if rec.shard is not None and not self.shards.intact(rec.shard, rec.shard_size):
                continue
            path = os.fsdecode(rec.path)
            if any(path.startswith(folder.rstrip(os.sep) + os.sep) for folder in unlisted):
                plan.held_unlisted.append(rec)
            elif self.job.roots and not self.job.covers(path) and not gone(rec.path):
                plan.held_outside.append(rec)
        if plan.held_unlisted:
            log.warning(
                "%d file(s) under folder(s) that cannot be listed now keep their earlier results (%s); they are "
                "checked again on the next run",
                len(plan.held_unlisted),
                ", ".join(r.source for r in plan.held_unlisted[:5])
                + (", ..." if len(plan.held_unlisted) > 5 else ""),
            )
        if plan.held_outside:
            earlier = self.state.get_meta("roots") or []
            log.warning(
                "%d file(s) analysed by earlier runs lie outside this run's inputs (earlier inputs: %s); their "
                "results are kept in %s. To leave them out, run with --force or write to another --out",
                len(plan.held_outside),
                ", ".join(map(str, earlier)) or "unknown",
                self.paths.out,
            )

    # 3. execute -------------------------------------------------------------------------------------------------
    def commit(self, result: FileResult) -> None:
        """Make one file's result durable: shard and thumbnails, then the state record (one transaction).

        Results that arrive in a burst (many small files) are committed together, at most `BATCH_FILES` of them
        and never one older than `BATCH_SECONDS` when the next arrives: one transaction for all; a file arriving
        after a quiet spell is committed at once. A kill loses at most the results not yet committed, which the
        next run redoes. Call `flush` when the results end. Its timeline chart and subtitles are drawn in the
        background (`drawing.Drawer`); a run killed before they are done redraws them next time (`_heal`)."""
        self._pending.append(result)
        if len(self._pending) >= BATCH_FILES or time.monotonic() - self._flushed_at >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Commit the pending results: shards renamed into place first, then their records in one transaction.

        A problem with one file's outputs (a name the file system refuses, a thumbnail that cannot be written)
        makes that file an error and the others go on; only a full disk or an unusable state store stops the
        run (OutputError, StateError)."""
        pending, self._pending = self._pending, []
        self._flushed_at = time.monotonic()
        if not pending:
            return
        ok = [r for r in pending if r.status == "ok" and r.records]
        texts: dict[int, bytes] = {}
        try:
            frame = rows_frame(itertools.chain.from_iterable(r.records for r in ok)) if ok else None
            if frame is not None:
                texts = dict(zip(map(id, ok), shard_texts([r.records for r in ok], frame)))
                self.table_parts.add(frame, {r.source.source: _duration(r.summary) for r in ok})
        except Exception:  # noqa: BLE001 - done one by one below, where a failure names its file
            texts = {}
        records = []
        for result in pending:
            try:
                records.append(self._prepare(result, texts.get(id(result))))
            except (OutputError, StateError):
                raise
            except Exception as exc:  # noqa: BLE001 - one file's commit never fails the run
                records.append(self._failed_commit(result, exc))
        self.state.record_many(records)
        self._records = None  # the store changed: `finish` reads it again

    def _prepare(self, result: FileResult, text: bytes | None) -> FileRecord:
        """Write one file's shard and thumbnails and queue its chart; return the record that points to them."""
        source, identity = result.source, result.identity
        shard = shard_size = None
        if result.status == "ok" and result.records:
            sha = identity.sha256 if identity else "unidentified"
            shard = shard_name(source.source, sha, self.fingerprint)
            if text is None:
                text = shard_texts([result.records])[0]
            try:
                shard_size = self.shards.write_text(shard, text)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise OutputError(
                        f"cannot write {self.shards.path(shard)}: {exc.strerror or exc}"
                    ) from exc
                raise
            self._keep_pictures(shard, source.source, result.thumbnails)
            if source.source not in self.table_parts:
                self.table_parts.add(result.rows, {source.source: _duration(result.summary)})
            if (
                result.summary.get("media_type") == "video"
            ):  # only videos get charts: rows built only for them
                self._draw(source.source, "video", result.rows, shard)
        return FileRecord(
            source=source.source,
            path=os.fsencode(source.path),
            identity=identity,
            fingerprint=self.fingerprint,
            status=result.status,
            error_kind=result.summary.get("error_kind"),
            shard=shard,
            shard_size=shard_size,
            rows=len(result.records),
            summary=result.summary,
        )

    def _failed_commit(self, result: FileResult, exc: Exception) -> FileRecord:
        """The record of a file whose results could not be saved: an error, retried on the next run."""
        message = f"its results could not be saved: {type(exc).__name__}: {exc}"
        log.error("%s: %s", result.source.source, message)
        log.debug("commit of %s failed", result.source.source, exc_info=True)
        media_type = result.summary.get("media_type")
        failed = error_result(result.source, self.job.settings, "internal", message, media_type=media_type)
        failed.identity = result.identity
        return self._prepare(failed, None)

    # 4. outputs -------------------------------------------------------------------------------------------------
    def _picture_dir(self, shard: str) -> Path:
        return self.paths.pictures / Path(shard).stem

    def _keep_pictures(self, shard: str, source: str, pictures: Mapping[tuple[int, int], bytes]) -> None:
        """The worker's thumbnails, into the state folder (kept with the shard) and the charts folder (the same
        files under a second name: `thumbnails.place`)."""
        folder = self._picture_dir(shard)
        folder.mkdir(parents=True, exist_ok=True)
        for (shot, track), data in pictures.items():
            name = thumbnails.thumbnail_filename(source, shot, track)
            kept = thumbnails.save_jpeg(folder / name, data)
            if self.paths.charts is not None:
                thumbnails.place(kept, self.paths.charts / name)

    def _pictures(
        self, shard: str, source: str, present: set[str] | None = None
    ) -> dict[tuple[object, int], Path]:
        """{(shot, track): thumbnail in the charts folder} of one file, copied there from the state folder when
        missing (a new or cleaned charts folder). `present`: the charts folder's file names, when the caller
        has listed it once for many files (updated with the copies made)."""
        if self.paths.charts is None:
            return {}
        folder = self._picture_dir(shard)
        try:
            names = sorted(os.listdir(folder))
        except OSError:  # no thumbnails kept for this file
            return {}
        found: dict[tuple[object, int], Path] = {}
        prefix = thumbnails.thumbnail_filename(source, 0, 0).rsplit(".shot-", 1)[0]
        for name in names:
            match = _PICTURE_NAME.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
            if match is None:
                continue
            target = self.paths.charts / name
            missing = name not in present if present is not None else not target.exists()
            if missing:
                thumbnails.place(folder / name, target)
                if present is not None:
                    present.add(name)
            found[(int(match["shot"]), int(match["track"]))] = target
        return found

    def _draw(
        self, source: str, media_type: object, rows: pd.DataFrame, shard: str, only_missing: bool = False
    ) -> None:
        """Queue the timeline chart and subtitles of one video (those missing only, when healing)."""
        if media_type != "video" or (only_missing and source in self._queued):
            return
        self._queued.add(source)
        if self.paths.charts is not None:
            target = self.paths.charts / chart_name(source)
            if not (only_missing and target.exists()):
                pictures = {track: path for (_, track), path in self._pictures(shard, source).items()}
                draw = functools.partial(charts.timeline_chart, pictures=pictures)
                self.drawer.submit(draw_atomically, draw, target, rows, source)
        if self.paths.subtitles is not None:
            vtt = self.paths.subtitles / subtitles.subtitle_filename(source)
            if not (only_missing and vtt.exists()):
                self.drawer.submit(subtitles.write_webvtt, rows, vtt)

    def finish(self, plan: Plan, processed: int) -> Outcome:
        """Re-assemble `--out`, the summary, the tables, charts and report from the state store; tidy up.

        Each output is rewritten only when what it is made of changed (or it is missing): a rerun with nothing
        new rewrites nothing."""
        self.flush()
        # The records `plan` read, when nothing was committed since; else the store's, read again.
        records = self._records if self._records is not None else self.state.records()
        summaries: list[Mapping[str, Any]] = []
        shards: list[str] = []
        rows = 0
        held = [*plan.held_unlisted, *plan.held_outside]
        entries: list[tuple[str, Source | FileRecord]] = [(s.source, s) for s in self.job.sources]
        if held:  # in source order with the others
            entries = sorted([*entries, *((r.source, r) for r in held)], key=lambda e: e[0])
        for _, entry in entries:
            if isinstance(entry, Source) and entry.skip_reason:
                summaries.append(skipped_result(entry, self.job.settings).summary)
                continue
            rec = records[entry.source]
            summaries.append(rec.summary)
            if rec.shard is not None:
                shards.append(rec.shard)
                rows += rec.rows
        table = summary_frame(summaries)
        digest = hashlib.sha256(
            json.dumps(
                [shards, table.astype(object).where(table.notna(), None).values.tolist()], default=str
            ).encode()
        ).hexdigest()
        rewritten = not self._up_to_date(digest)
        if rewritten:
            assemble(self.paths.out, self.shards, shards)
            write_table(self.paths.summary, table, summary_frame([]))
            self.state.set_meta("assembled", {"digest": digest, **self._stamp()})
        self._heal(table, records)
        self.drawer.wait()
        self._derived(digest, table, records)
        self.drawer.close()
        self._tidy(records)
        return Outcome(table, rows, processed, plan.kept, rewritten=rewritten)

    def _heal(self, table: pd.DataFrame, records: dict[str, FileRecord]) -> None:
        """Draw the timelines and subtitles missing from their folders (deleted, new folder, killed run)."""
        if self.paths.charts is None and self.paths.subtitles is None:
            return
        ok_video = (table["status"] == "ok") & (table["media_type"] == "video")
        for source in table[ok_video.fillna(False) & (table["faces"].fillna(0) > 0)]["source"]:
            rec = records.get(source)
            if rec is None or not rec.shard or not self.shards.intact(rec.shard, rec.shard_size):
                continue
            chart = self.paths.charts / chart_name(source) if self.paths.charts else None
            vtt = self.paths.subtitles / subtitles.subtitle_filename(source) if self.paths.subtitles else None
            if any(p is not None and not p.exists() for p in (chart, vtt)):
                self._draw(source, "video", self.shards.read(rec.shard), rec.shard, only_missing=True)

    def _derived(self, digest: str, table: pd.DataFrame, records: dict[str, FileRecord]) -> None:
        """The overview, the timeline and track tables and the report: rebuilt only when their inputs changed."""
        paths = self.paths
        pictures: dict[str, dict[tuple[object, int], Path]] = {}
        present = (
            set(os.listdir(paths.charts)) if paths.charts is not None and paths.charts.is_dir() else set()
        )
        for source in table["source"]:
            rec = records.get(source)
            if rec is not None and rec.shard and rec.status == "ok":
                pictures[source] = self._pictures(rec.shard, source, present)
        timelines = {}
        if paths.charts is not None:
            for source, media in zip(table["source"], table["media_type"]):
                chart = paths.charts / chart_name(source)
                if isinstance(media, str) and media == "video" and chart.is_file():
                    timelines[source] = chart
        key = json.dumps(
            [digest, paths.bin_s, str(paths.report), str(paths.subtitles), str(paths.charts)], default=str
        )
        inputs = [*timelines.values(), *(p for per in pictures.values() for p in per.values())]
        overviews = sorted(paths.charts.glob("overview*.png")) if paths.charts is not None else []
        outputs = [paths.timeline, paths.tracks, *overviews, *([paths.report] if paths.report else [])]
        previous = self.state.get_meta("derived") or {}
        if previous.get("key") == key and previous.get("stamps") == _stamps([*inputs, *outputs]):
            return
        pages: dict[str, list[Any]] = {}
        if paths.charts is not None:
            pages = self._overviews(paths.charts, table, previous.get("pages") or {})
            overviews = sorted(paths.charts.glob("overview*.png"))
        timeline, tracks, built_from = self._tables(table, records)
        write_table(paths.timeline, timeline, timeline.iloc[:0])
        write_table(paths.tracks, tracks, tracks.iloc[:0])
        self._remember_tables(built_from)
        if paths.report is not None:
            overview = paths.charts / "overview.png" if paths.charts is not None else None
            html = render_report(
                summary=table,
                metadata=self._metadata(),
                tracks=tracks,
                timeline=timeline,
                overview_chart=overview if overview is not None and overview.is_file() else None,
                timeline_charts=timelines,
                thumbnails=pictures,
                subtitles={
                    s: paths.subtitles / subtitles.subtitle_filename(s)
                    for s in timelines
                    if paths.subtitles is not None
                    and (paths.subtitles / subtitles.subtitle_filename(s)).is_file()
                },
            )
            with atomic_path(paths.report) as pending:
                pending.path.write_text(html, encoding="utf-8")
        outputs = [paths.timeline, paths.tracks, *overviews, *([paths.report] if paths.report else [])]
        self.state.set_meta("derived", {"key": key, "stamps": _stamps([*inputs, *outputs]), "pages": pages})

    def _overviews(
        self, charts_dir: Path, table: pd.DataFrame, drawn: Mapping[str, Any]
    ) -> dict[str, list[Any]]:
        """Draw the overview pages whose files changed (a new file at the end of a big folder redraws only the
        last page); remove pages no longer needed. `drawn`: {file name: [content digest, stat]} of the pages
        drawn last time; returns the same for now."""
        pages: dict[str, list[Any]] = {}
        for page, part, more in charts.overview_pages(table) if len(table) else []:
            target = charts_dir / charts.overview_filename(page)
            values = part.astype(object).where(part.notna(), None).values.tolist()
            content = hashlib.sha256(json.dumps([page, more, values], default=str).encode()).hexdigest()
            if list(drawn.get(target.name) or []) != [content, _stat(target)]:
                draw_atomically(functools.partial(charts.overview_chart, page=page, more=more), target, part)
            pages[target.name] = [content, _stat(target)]
        for stale in charts_dir.glob("overview*.png"):
            if stale.name not in pages:
                stale.unlink(missing_ok=True)
        return pages

    def _tables(
        self, table: pd.DataFrame, records: dict[str, FileRecord]
    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
        """The timeline (bins of `bin_s`) and track tables of every file, in source order, and {source: short
        shard name} of the files in them (for `_remember_tables`).

        Files analysed in this run bring the parts built as they committed. A file kept from earlier runs takes
        its rows from the tables the last run wrote when those are exactly as written and were built from the
        same shard (one read of each table, however many files); otherwise its parts are built from its shard."""
        durations = {
            str(s): _duration({"duration_s": d}) for s, d in zip(table["source"], table["duration_s"])
        }
        previous, built_from = self._previous_tables()
        shards: dict[str, str] = {}  # source -> shard, of the files whose rows the tables hold
        reused: set[str] = set()
        rebuild: list[tuple[str, str]] = []
        for source in table["source"]:
            rec = records.get(source)
            if rec is None or not rec.shard or not self.shards.intact(rec.shard, rec.shard_size):
                continue
            shards[source] = rec.shard
            if source in self.table_parts:
                continue
            if built_from.get(source) == _short(rec.shard):
                reused.add(source)
            else:
                rebuild.append((source, rec.shard))
        for start in range(0, len(rebuild), BATCH_FILES):  # one pandas pass per batch of shards
            batch = rebuild[start : start + BATCH_FILES]
            rows = pd.concat([self.shards.read(shard) for _, shard in batch], ignore_index=True)
            self.table_parts.add(rows, {source: durations.get(str(source)) for source, _ in batch})
        fresh = {s for s in shards if s not in reused}
        order = {source: k for k, source in enumerate(table["source"])}
        out = []
        new_parts = self.table_parts.rows_of(fresh)
        for kept, parts, columns in zip(previous, new_parts, (tables.TIMELINE_COLUMNS, tables.TRACK_COLUMNS)):
            if reused and kept is not None:
                parts = [kept[kept["source"].astype(object).isin(reused)], *parts]
            whole = tables.concat(parts, columns)
            position = whole["source"].astype(object).map(order).to_numpy()
            out.append(whole.iloc[np.argsort(position, kind="stable")].reset_index(drop=True))
        return out[0], out[1], {source: _short(shard) for source, shard in shards.items()}

    def _previous_tables(self) -> tuple[tuple[pd.DataFrame | None, pd.DataFrame | None], dict[str, str]]:
        """The timeline and track tables the last run wrote, with {source: short shard name} they were built from;
        (None, None) and {} when they are missing, were changed since, or used another bin."""
        meta = self.state.get_meta("tables") or {}
        paths = (self.paths.timeline, self.paths.tracks)
        if (
            meta.get("bin_s") != self.paths.bin_s
            or meta.get("stamps") != [_stat(path) for path in paths]
            or any(path.suffix.lower() in PARQUET_SUFFIXES for path in paths)
        ):
            return (None, None), {}
        try:
            found = tuple(
                tables.read_table(path, columns)
                for path, columns in zip(paths, (tables.TIMELINE_COLUMNS, tables.TRACK_COLUMNS))
            )
        except Exception as exc:  # noqa: BLE001 - only a shortcut: the parts are built from the shards instead
            log.debug("earlier tables unusable (%s): built from the shards", exc)
            return (None, None), {}
        return (found[0], found[1]), dict(meta.get("built_from") or {})

    def _remember_tables(self, built_from: dict[str, str]) -> None:
        """Note what the tables just written were built from, for the next run's `_previous_tables`."""
        paths = [self.paths.timeline, self.paths.tracks]
        self.state.set_meta(
            "tables",
            {
                "bin_s": self.paths.bin_s,
                "stamps": [_stat(p) for p in paths],
                "built_from": built_from,
            },
        )

    def _metadata(self) -> dict[str, Any]:
        import datetime
        import importlib.metadata
        import platform

        def version(package: str) -> str:
            try:
                return importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:  # run from a bare checkout
                return "unknown"

        def given(
            value: Any,
        ) -> Any:  # settings left at None (e.g. --every when sampling by time) say nothing
            if isinstance(value, dict):
                return {k: given(v) for k, v in value.items() if v is not None}
            return value

        settings = self.job.settings
        libraries = ("emotion-batch", "onnxruntime", "opencv-python-headless", "av", "numpy")
        return {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "inputs": [str(root) for root in self.job.roots],
            "output": str(self.paths.out),
            "files": len(self.job.sources),
            "model": {"name": settings.model.name, "sha256": settings.model.sha256},
            "detector": {"name": settings.detector.name, "sha256": settings.detector.sha256},
            "settings": given(self.settings),
            "timeline bin": f"{self.paths.bin_s:g} s",
            "versions": {"python": platform.python_version(), **{name: version(name) for name in libraries}},
        }

    def _stamp(self) -> dict[str, Any]:
        return {"out": _stat(self.paths.out), "summary": _stat(self.paths.summary)}

    def _up_to_date(self, digest: str) -> bool:
        """True when the outputs on disk are exactly what this state assembled last time (nothing to rewrite)."""
        previous = self.state.get_meta("assembled")
        return (
            bool(previous)
            and previous.get("digest") == digest
            and previous == {"digest": digest, **self._stamp()}
        )

    def _tidy(self, records: dict[str, FileRecord]) -> None:
        """Forget files that no longer exist anywhere; remove shards (and their thumbnails) no record points to."""
        current = {s.source for s in self.job.sources}
        # Only a file that is really gone (ENOENT) is forgotten: one behind a folder that cannot be read now, or
        # on a share that answers EIO, keeps its record and its rows.
        forgotten = {s for s, r in records.items() if s not in current and gone(r.path)}
        self.state.forget(sorted(forgotten))
        keep = [r.shard for s, r in records.items() if r.shard and s not in forgotten]
        self.shards.prune(keep)
        wanted = {Path(k).stem for k in keep}
        for folder in self.paths.pictures.iterdir() if self.paths.pictures.is_dir() else []:
            if folder.is_dir() and folder.name not in wanted:
                shutil.rmtree(folder, ignore_errors=True)


_PICTURE_NAME = re.compile(r"\.shot-(?P<shot>\d+)\.track-(?P<track>\d+)\.jpg")


def _duration(summary: Mapping[str, Any]) -> float | None:
    value = summary.get("duration_s")
    try:
        duration = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if duration != duration else duration


def _short(shard: str) -> str:
    """A shard's name in 12 hex digits: enough to tell whether a file's rows changed, small for 100,000 files."""
    return hashlib.sha256(shard.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _stat(path: str | os.PathLike[str]) -> list[int] | None:
    try:
        info = os.stat(path)  # not Path.stat(): a rerun stats 100,000 thumbnails
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _stamps(paths: list[Path]) -> dict[str, list[int] | None]:
    return {str(p): _stat(p) for p in paths}


def draw_atomically(draw: Callable[..., Path | None], target: Path, data: Any, *args: Any) -> None:
    """Draw a chart into a temporary PNG and rename it into place; a chart problem never fails the run."""
    try:
        with atomic_path(target, suffix=CHART_TEMP_SUFFIX) as pending:
            if draw(data, *args, pending.path) is None:
                pending.discard()
        if pending.discarded:
            target.unlink(missing_ok=True)  # nothing to draw now: do not leave an outdated chart behind
        else:
            log.debug("chart %s", target)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not draw chart %s: %s", target, exc)
