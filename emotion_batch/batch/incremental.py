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

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import FileResult, describe_settings, skipped_result
from ..files import TEMP_SUFFIX, atomic_path, file_digest, temp_prefix
from ..media.sources import Source
from ..output import charts
from ..output.sinks import OutputError, write_table
from ..schema import summary_frame
from .job import Job
from .shards import ShardStore, assemble, shard_name
from .state import FileRecord, StateStore, explain_change, fingerprint_of

log = logging.getLogger("emotion_batch")

STATE_SUFFIX = ".state"
#: Charts are drawn into a temporary file with this suffix (matplotlib picks the format by extension).
CHART_TEMP_SUFFIX = ".tmp.png"


@dataclass(frozen=True)
class OutputPaths:
    """Where one run writes: results, summary, charts, and the state folder (state store, shards, lock)."""

    out: Path
    summary: Path
    charts: Path | None
    state_dir: Path

    @classmethod
    def for_out(
        cls, out: Path, summary: Path | None = None, charts: Path | None = None, no_charts: bool = False
    ) -> OutputPaths:
        out = Path(out)
        summary = summary or out.with_name(f"{out.stem}_summary{out.suffix}")
        charts_dir = None if no_charts else charts or out.with_name(f"{out.stem}_charts")
        return cls(out, Path(summary), charts_dir, out.with_name(out.name + STATE_SUFFIX))

    @property
    def lock(self) -> Path:
        return self.state_dir / "lock"

    @property
    def database(self) -> Path:
        return self.state_dir / "state.sqlite3"

    @property
    def shards(self) -> Path:
        return self.state_dir / "shards"

    def ignored(self) -> list[Path]:
        """Everything this run writes, never to be read back as input (outputs may sit in an input folder)."""
        return [self.out, self.summary, self.state_dir, *([self.charts] if self.charts else [])]

    def check_writable(self) -> None:
        """Fail before any work when an output folder is missing or not writable."""
        for target in (self.out, self.summary):
            if target.is_dir():
                raise OutputError(f"output path is a folder, not a file: {target}")
        folders = list(dict.fromkeys([self.out.parent, self.summary.parent]))
        for folder in folders:
            if not folder.is_dir():
                raise OutputError(f"output folder does not exist: {folder}")
            _probe(folder)
        if self.charts is not None:
            _make_folder(self.charts, "charts folder")
            _probe(self.charts)

    def prepare_state_dir(self) -> None:
        _make_folder(self.shards, "state folder")

    def remove_stale_temporaries(self) -> int:
        """Temporary files of runs that were killed (safe: we hold the lock, nobody else is writing)."""
        removed = 0
        places = [(self.out.parent, temp_prefix(self.out)), (self.summary.parent, temp_prefix(self.summary))]
        if self.charts is not None and self.charts.is_dir():
            places.append((self.charts, "."))
        for folder, prefix in places:
            for entry in folder.glob(prefix + "*"):
                if entry.name.endswith((TEMP_SUFFIX, CHART_TEMP_SUFFIX)) and entry.is_file():
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

    def record(self) -> dict[str, Any]:
        """The plan as plain JSON, kept in the state store as `last_plan` (what the last run set out to do)."""
        return {
            "analysed": len(self.process),
            "reasons": dict(self.reasons),
            "kept": self.kept,
            "skipped": self.skipped,
        }

    def describe(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        parts = [f"analysing {len(self.process)} file(s)" + (f" ({why})" if why else "")]
        if self.kept:
            parts.append(f"{self.kept} unchanged file(s) kept from earlier runs")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (not media)")
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
    def _unchanged(self, source: Source, rec: FileRecord) -> bool:
        ident = rec.identity
        if ident is None:
            return False
        try:
            info = os.stat(source.path)
        except OSError:
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
        records = self.state.records()
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
            elif not self._unchanged(source, rec):
                reason = "changed"
            elif rec.shard is not None and not self.shards.intact(rec.shard, rec.shard_size):
                reason = "rows missing from the state folder"
            else:
                plan.kept += 1
                continue
            plan.process.append(source)
            plan.reasons[reason] += 1
        return plan

    # 3. execute -------------------------------------------------------------------------------------------------
    def commit(self, result: FileResult) -> None:
        """Make one file's result durable: shard (atomic rename), chart, then the state record (one transaction)."""
        source, rows, identity = result.source, result.rows, result.identity
        shard = shard_size = None
        if result.status == "ok" and len(rows):
            sha = identity.sha256 if identity else "unidentified"
            shard = shard_name(source.source, sha, self.fingerprint)
            shard_size = self.shards.write(shard, rows)
            if self.paths.charts is not None and result.summary.get("media_type") == "video":
                self._timeline(rows, source.source)
        self.state.record(
            FileRecord(
                source=source.source,
                path=os.fsencode(source.path),
                identity=identity,
                fingerprint=self.fingerprint,
                status=result.status,
                error_kind=result.summary.get("error_kind"),
                shard=shard,
                shard_size=shard_size,
                rows=len(rows),
                summary=result.summary,
            )
        )

    # 4. outputs -------------------------------------------------------------------------------------------------
    def _timeline(self, rows: pd.DataFrame, source: str) -> None:
        if self.paths.charts is None:
            return
        target = self.paths.charts / charts.chart_filename(source)
        draw_atomically(charts.timeline_chart, target, rows, source)

    def finish(self, plan: Plan, processed: int) -> Outcome:
        """Re-assemble `--out`, the summary and the charts from the state store, then tidy the state folder."""
        records = self.state.records()
        summaries: list[Mapping[str, Any]] = []
        shards: list[str] = []
        rows = 0
        for source in self.job.sources:
            if source.skip_reason:
                summaries.append(skipped_result(source, self.job.settings).summary)
                continue
            rec = records[source.source]
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
        if self.paths.charts is not None:
            self._heal_timelines(table, records)
            draw_atomically(charts.overview_chart, self.paths.charts / "overview.png", table)
        self._tidy(records)
        return Outcome(table, rows, processed, plan.kept, rewritten=rewritten)

    def _stamp(self) -> dict[str, Any]:
        def stat(path: Path) -> list[int] | None:
            try:
                info = path.stat()
            except OSError:
                return None
            return [info.st_size, info.st_mtime_ns]

        return {"out": stat(self.paths.out), "summary": stat(self.paths.summary)}

    def _up_to_date(self, digest: str) -> bool:
        """True when the outputs on disk are exactly what this state assembled last time (nothing to rewrite)."""
        previous = self.state.get_meta("assembled")
        return (
            bool(previous)
            and previous.get("digest") == digest
            and previous == {"digest": digest, **self._stamp()}
        )

    def _heal_timelines(self, table: pd.DataFrame, records: dict[str, FileRecord]) -> None:
        """Draw timelines missing from the charts folder (deleted, new folder, killed between steps)."""
        if self.paths.charts is None:
            return
        ok_video = (table["status"] == "ok") & (table["media_type"] == "video")
        wanted = table[ok_video.fillna(False) & (table["faces"].fillna(0) > 0)]
        for source in wanted["source"]:
            target = self.paths.charts / charts.chart_filename(source)
            rec = records.get(source)
            if (
                not target.exists()
                and rec is not None
                and rec.shard
                and self.shards.intact(rec.shard, rec.shard_size)
            ):
                draw_atomically(charts.timeline_chart, target, self.shards.read(rec.shard), source)

    def _tidy(self, records: dict[str, FileRecord]) -> None:
        """Forget files that no longer exist anywhere; remove shards no record points to."""
        current = {s.source for s in self.job.sources}
        gone = [
            s for s, r in records.items() if s not in current and not os.path.lexists(os.fsdecode(r.path))
        ]
        self.state.forget(gone)
        keep = [r.shard for s, r in records.items() if r.shard and s not in gone]
        self.shards.prune(keep)


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
