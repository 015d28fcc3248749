"""The run report: one self-contained HTML file (`<out stem>_report.html`) a person opens after a run.

Sections (each an element with a stable id, for people linking to them and for tests): `run` (metadata: inputs,
model and detector with sha256, settings, versions, date), `totals`, `files` (the per-file summary, errors
included), `overview` (the overview chart), `videos` (per video: its people with thumbnails, the timeline chart,
the minute-by-minute table) and `photos` (the faces of each photo).

Every image is embedded as a data: URI and the page declares a Content-Security-Policy that forbids any
network access and any script, so it reads the same offline, mailed, or archived; it has print CSS. Every text
that comes from files (names, error messages, metadata) is HTML-escaped.

`render_report` is a pure function of its arguments (the files it embeds included: `report_inputs` lists them),
so a run driver can skip rebuilding when none changed. `write_report` writes it atomically.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import quick_replace
from ..schema import EMOTIONS, dominant_emotion
from .charts import EMOTION_COLOURS

if TYPE_CHECKING:
    import pandas as pd

#: {source: {(shot, track_id): thumbnail path}}, as `thumbnails.write_thumbnails` returns per file.
Thumbnails = Mapping[str, Mapping[tuple[object, int], Path]]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
SECTIONS = ("run", "totals", "files", "overview", "videos", "photos")
#: Videos (and, separately, photos) given a section of their own; the rest are listed by name.
DEFAULT_MAX_SECTIONS = 200
#: Files listed in the files table at most, besides every file with an error or skipped (about 700 bytes of
#: HTML each: 100,000 files made a 69 MB report); the rest are counted in a note, and all are in the CSVs.
MAX_TABLE_FILES = 5000
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}

_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d232a;
 background:#f4f5f7;margin:0}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 10px;border-bottom:2px solid #e3e6ea;
 padding-bottom:4px}h3{font-size:16px;margin:22px 0 8px}
.sub{color:#5b6672;margin:0 0 16px}
nav{font-size:13px;margin:0 0 8px}nav a{margin-right:12px;color:#2457a6}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e6ea;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.name{overflow-wrap:anywhere;max-width:360px}
.wrap{overflow-x:auto}
tr.error td{background:#fdecec}tr.skipped td{color:#6b7480}
.err{color:#a11;font-size:12px;word-break:break-word}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0;font-size:13px}
dl.meta dt{font-weight:600;color:#39424c}dl.meta dd{margin:0;word-break:break-all}
dl.meta dl.meta{border-left:3px solid #e3e6ea;padding-left:8px}
code{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e3e6ea;border-radius:6px;padding:8px;width:170px;font-size:12px;break-inside:avoid}
.card img{width:152px;height:152px;display:block;border-radius:4px;background:#ddd;object-fit:cover}
.card b{font-size:13px}
.mix{display:flex;height:10px;border-radius:3px;overflow:hidden;min-width:80px;margin:3px 0}
.mix span{display:block;height:100%}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
img.chart{max-width:100%;height:auto;border:1px solid #e3e6ea}
.totals{display:flex;flex-wrap:wrap;gap:10px}
.totals div{background:#f0f2f5;border-radius:6px;padding:8px 14px;min-width:120px}
.totals b{display:block;font-size:20px}
.video{break-before:auto}
.none{color:#6b7480;font-style:italic}
@media print{
 body{background:#fff;font-size:10.5pt}main{max-width:none;padding:0}nav{display:none}
 h2{break-after:avoid}h3{break-after:avoid}.card,tr,img.chart{break-inside:avoid}
 .wrap{overflow:visible}a{color:inherit;text-decoration:none}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""


def report_path(out: str | os.PathLike[str]) -> Path:
    """`<out stem>_report.html` beside the results file `out`."""
    out = Path(out)
    return out.with_name(f"{out.stem}_report.html")


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _missing(value: object) -> bool:
    try:
        return value is None or bool(value != value) or (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def _num(value: object, digits: int = 0, unit: str = "") -> str:
    if _missing(value):
        return ""
    v = float(value)  # type: ignore[arg-type]
    return f"{v:,.{digits}f}{unit}"


def _data_uri(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    mime = _MIME.get(p.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def _img(path: Path | None, alt: str, cls: str = "") -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="none">{_e(alt)}: no picture</p>'
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} src="{_data_uri(path)}" alt="{_e(alt)}">'


def _mix(row: Mapping[str, Any]) -> str:
    """An inline bar of the emotion mix (mean probabilities, normalised), with a text title for each share."""
    values = [0.0 if _missing(row.get(f"mean_{e}")) else float(row[f"mean_{e}"]) for e in EMOTIONS]
    total = sum(values)
    if total <= 0:
        return ""
    spans = "".join(
        f'<span style="width:{100 * v / total:.2f}%;background:{EMOTION_COLOURS[e]}" title="{e} {v / total:.0%}">'
        "</span>"
        for e, v in zip(EMOTIONS, values)
        if v > 0
    )
    return f'<div class="mix">{spans}</div>'


def _legend() -> str:
    items = "".join(f'<span><i style="background:{EMOTION_COLOURS[e]}"></i>{e}</span>' for e in EMOTIONS)
    return f'<p class="legend">{items}</p>'


def _meta(value: Any) -> str:
    if isinstance(value, Mapping):
        if not value:
            return '<span class="none">none</span>'
        items = "".join(f"<dt>{_e(k)}</dt><dd>{_meta(v)}</dd>" for k, v in value.items())
        return f'<dl class="meta">{items}</dl>'
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            return "<br>".join(f"<code>{_e(v)}</code>" for v in value) or '<span class="none">none</span>'
        return "".join(_meta(v) for v in value)
    return f"<code>{_e(value)}</code>"


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None or frame.empty:
        return []
    return [{str(k): (None if _missing(v) else v) for k, v in r.items()} for r in frame.to_dict("records")]


def _totals(files: list[dict[str, Any]], tracks: list[dict[str, Any]]) -> str:
    def count(status: str) -> int:
        return sum(1 for f in files if f.get("status") == status)

    videos = [f for f in files if f.get("media_type") == "video" and f.get("status") == "ok"]
    seconds = sum(float(f.get("duration_s") or 0) for f in videos)
    faces = sum(int(f.get("faces") or 0) for f in files)
    people = len(tracks)
    means = {
        f"mean_{e}": (
            sum(float(f.get(f"mean_{e}") or 0) * int(f.get("faces") or 0) for f in files) / faces
            if faces
            else None
        )
        for e in EMOTIONS
    }
    tiles = [
        ("files", len(files)),
        ("ok", count("ok")),
        ("errors", count("error")),
        ("skipped", count("skipped")),
        ("video time", f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"),
        ("frames sampled", f"{sum(int(f.get('frames_sampled') or 0) for f in files):,}"),
        ("faces", f"{faces:,}"),
        ("people (tracks)", f"{people:,}"),
        ("dominant overall", dominant_emotion(means) or "-"),
    ]
    body = "".join(f"<div>{_e(name)}<b>{_e(value)}</b></div>" for name, value in tiles)
    kinds: dict[str, int] = {}
    for f in files:
        if f.get("status") == "error":
            kinds[str(f.get("error_kind") or "unknown")] = (
                kinds.get(str(f.get("error_kind") or "unknown"), 0) + 1
            )
    extra = ""
    if kinds:
        extra = "<p>Errors by kind: " + ", ".join(f"{_e(k)} {n}" for k, n in sorted(kinds.items())) + "</p>"
    return f'<div class="totals">{body}</div>{extra}'


def _files_table(files: list[dict[str, Any]], limit: int | None = MAX_TABLE_FILES) -> str:
    """Every file that failed or was skipped, and the first `limit` analysed ones, in summary order."""
    listed, left_out = files, 0
    if limit is not None:
        listed, ok = [], 0
        for f in files:
            if f.get("status") == "ok":
                ok += 1
                if ok > limit:
                    left_out += 1
                    continue
            listed.append(f)
    head = (
        "<tr><th>file</th><th>type</th><th>status</th><th>duration</th><th>frames</th><th>faces</th>"
        "<th>tracks</th><th>dominant</th><th>emotion mix</th></tr>"
    )
    body = []
    for f in listed:
        status = str(f.get("status") or "")
        duration = _num(f.get("duration_s"), 1, " s") if f.get("media_type") == "video" else ""
        error = ""
        if f.get("error"):
            kind = f" ({_e(f.get('error_kind'))})" if f.get("error_kind") else ""
            error = f'<div class="err">{_e(f["error"])}{kind}</div>'
        body.append(
            f'<tr class="{_e(status)}"><td class="name">{_e(f.get("source"))}{error}</td>'
            f"<td>{_e(f.get('media_type'))}</td><td>{_e(status)}</td>"
            f'<td class="n">{duration}</td><td class="n">{_num(f.get("frames_sampled"))}</td>'
            f'<td class="n">{_num(f.get("faces"))}</td><td class="n">{_num(f.get("tracks"))}</td>'
            f"<td>{_e(f.get('dominant_emotion'))}</td><td>{_mix(f)}</td></tr>"
        )
    note = (
        f'<p class="none">{left_out:,} more analysed files are not listed here: every file is in the summary '
        "CSV.</p>"
        if left_out
        else ""
    )
    return f'<div class="wrap"><table>{head}{"".join(body)}</table></div>{note}'


def _shot_key(value: object) -> object:
    return None if _missing(value) else value


def _track_label(t: Mapping[str, Any]) -> str:
    shot = _shot_key(t.get("shot"))
    return (f"shot {shot} " if shot is not None else "") + f"track {int(t['track_id'])}"


def _cards(tracks: list[dict[str, Any]], thumbs: Mapping[tuple[object, int], Path], video: bool) -> str:
    if not tracks:
        return '<p class="none">no faces</p>'
    cards = []
    for t in tracks:
        key = (_shot_key(t.get("shot")), int(t["track_id"]))
        label = _track_label(t) if video else f"face {int(t['track_id'])}"
        seen = (
            f"{float(t['first_seen_s']):.1f}-{float(t['last_seen_s']):.1f} s, "
            f"{float(t.get('seconds_in_view') or 0):.1f} s in view, {int(t['samples'])} samples<br>"
            if video
            else ""
        )
        dominant = t.get("dominant_emotion")
        share = t.get(f"mean_{dominant}") if dominant else None
        cards.append(
            f'<div class="card">{_img(thumbs.get(key), label)}<b>{_e(label)}</b><br>{seen}'
            f"mostly <b>{_e(dominant)}</b> {_num(share if share is None else 100 * float(share), 0, '%')}"
            f"{_mix(t)}</div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _minute_table(bins: list[dict[str, Any]]) -> str:
    if not bins:
        return '<p class="none">no faces</p>'
    head = "<tr><th>track</th><th>from</th><th>to</th><th>samples</th><th>dominant</th>" + "".join(
        f"<th>{e}</th>" for e in EMOTIONS
    )
    body = []
    for b in bins:
        cells = "".join(f'<td class="n">{_num(100 * float(b[f"mean_{e}"]), 0, "%")}</td>' for e in EMOTIONS)
        body.append(
            f"<tr><td>{_e(_track_label(b))}</td><td class=n>{_clock(b['bin_start_s'])}</td>"
            f"<td class=n>{_clock(b['bin_end_s'])}</td><td class=n>{int(b['samples'])}</td>"
            f"<td>{_e(b.get('dominant_emotion'))}</td>{cells}</tr>"
        )
    return f'<div class="wrap"><table>{head}</tr>{"".join(body)}</table></div>'


def _clock(seconds: object) -> str:
    s = int(round(float(seconds)))  # type: ignore[arg-type]
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _by_source(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(str(r["source"]), []).append(r)
    return out


def _cap(files: list[dict[str, Any]], limit: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (files, []) if limit is None else (files[:limit], files[limit:])


def _more(files: list[dict[str, Any]], what: str) -> str:
    if not files:
        return ""
    names = ", ".join(f"<code>{_e(f.get('source'))}</code>" for f in files[:50])
    tail = f" and {len(files) - 50:,} more" if len(files) > 50 else ""
    return f'<p class="none">{len(files):,} more {what} not shown here (see the CSVs): {names}{tail}</p>'


def render_report(
    *,
    summary: pd.DataFrame,
    metadata: Mapping[str, Any],
    tracks: pd.DataFrame | None = None,
    timeline: pd.DataFrame | None = None,
    overview_chart: str | os.PathLike[str] | None = None,
    timeline_charts: Mapping[str, str | os.PathLike[str]] | None = None,
    thumbnails: Thumbnails | None = None,
    subtitles: Mapping[str, str | os.PathLike[str]] | None = None,
    title: str = "emotion-batch report",
    max_sections: int | None = DEFAULT_MAX_SECTIONS,
    max_table_files: int | None = MAX_TABLE_FILES,
) -> str:
    """The report's HTML. A pure function of its arguments and the contents of the image files they name.

    - `summary`: the per-file summary (`schema.SUMMARY_COLUMNS`), in the order files should be listed.
    - `metadata`: what the run was, shown as given (nested mappings and lists are fine); e.g. inputs, output,
      model / detector with sha256, settings, versions, started / finished. The date is never computed here.
    - `tracks`, `timeline`: `timeline.track_table` / `timeline_table` output for all files.
    - `overview_chart`, `timeline_charts` ({source: png}), `thumbnails` ({source: {(shot, track): jpg}}):
      image files to embed; missing ones are reported as "no picture", never as a broken image.
    - `subtitles`: {source: vtt path}, listed by file name (a report cannot embed them usefully).
    - `max_sections`: at most this many videos and this many photos get a section (the first ones in summary
      order; None: all), so a run over thousands of files still gives a report a browser opens. The rest are
      named in a note; every file is in the CSVs either way, and in the files table (which lists at most
      `max_table_files` files without errors, and counts the others).
    """
    files = _records(summary)
    track_rows = _by_source(_records(tracks))
    bin_rows = _by_source(_records(timeline))
    charts = dict(timeline_charts or {})
    thumbs = thumbnails or {}
    subs = subtitles or {}

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(metadata.get("date") or metadata.get("finished") or "")}</p>',
        "<nav>" + "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS) + "</nav>",
        f'<section id="run"><h2>Run</h2>{_meta(dict(metadata))}</section>',
        f'<section id="totals"><h2>Totals</h2>{_totals(files, [t for v in track_rows.values() for t in v])}'
        "</section>",
        f'<section id="files"><h2>Files</h2>{_legend()}{_files_table(files, max_table_files)}</section>',
        '<section id="overview"><h2>Overview</h2>'
        + (
            _img(Path(overview_chart), "emotion mix per file", "chart")
            if overview_chart
            else '<p class="none">no file had faces</p>'
        )
        + "</section>",
        '<section id="videos"><h2>Videos</h2>',
    ]
    videos = [f for f in files if f.get("media_type") == "video" and f.get("status") == "ok"]
    if not videos:
        parts.append('<p class="none">no video analysed</p>')
    videos, more_videos = _cap(videos, max_sections)
    for n, f in enumerate(videos):
        source = str(f["source"])
        sub = subs.get(source)
        sub_line = f"<p>Subtitles: <code>{_e(Path(sub).name)}</code></p>" if sub else ""
        chart = charts.get(source)
        parts.append(
            f'<section class="video" id="video-{n}"><h3>{_e(source)}</h3>'
            f"<p>{_num(f.get('duration_s'), 1, ' s')}, {_num(f.get('frames_sampled'))} frames sampled, "
            f"{_num(f.get('faces'))} faces, {_num(f.get('tracks'))} tracks; mostly "
            f"<b>{_e(f.get('dominant_emotion') or '-')}</b></p>{sub_line}"
            f"<h4>People</h4>{_cards(track_rows.get(source, []), thumbs.get(source, {}), True)}"
            "<h4>Timeline</h4>"
            + (
                _img(Path(chart), f"{source} timeline", "chart")
                if chart
                else '<p class="none">no track long enough for a chart</p>'
            )
            + f"<h4>Minute by minute</h4>{_minute_table(bin_rows.get(source, []))}</section>"
        )
    parts.append(_more(more_videos, "videos"))
    parts.append("</section>")
    parts.append('<section id="photos"><h2>Photos</h2>')
    photos = [f for f in files if f.get("media_type") == "image" and f.get("status") == "ok"]
    if not photos:
        parts.append('<p class="none">no photo analysed</p>')
    photos, more_photos = _cap(photos, max_sections)
    for f in photos:
        source = str(f["source"])
        parts.append(
            f"<h3>{_e(source)}</h3>{_cards(track_rows.get(source, []), thumbs.get(source, {}), False)}"
        )
    parts.append(_more(more_photos, "photos"))
    parts.append("</section></main></body></html>")
    return "\n".join(parts)


def report_inputs(
    overview_chart: str | os.PathLike[str] | None = None,
    timeline_charts: Mapping[str, str | os.PathLike[str]] | None = None,
    thumbnails: Thumbnails | None = None,
) -> list[Path]:
    """The files `render_report` reads (besides its table arguments): for a driver deciding to skip a rebuild."""
    paths: Iterable[str | os.PathLike[str]] = [
        *([overview_chart] if overview_chart else []),
        *(timeline_charts or {}).values(),
        *(p for per in (thumbnails or {}).values() for p in per.values()),
    ]
    return sorted({Path(p) for p in paths})


def write_report(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Render (see `render_report` for the arguments) and write the report atomically; returns its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with quick_replace(out) as partial:
        partial.write_text(render_report(**kwargs), encoding="utf-8")
    return out


@dataclass
class RunOutputs:
    """What `build_run_outputs` wrote."""

    timeline_csv: Path
    tracks_csv: Path
    report: Path
    subtitles: dict[str, Path] = field(default_factory=dict)
    thumbnails: dict[str, dict[tuple[object, int], Path]] = field(default_factory=dict)


def _read(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    # Only empty fields are missing: a file named "NA" or "null.jpg" keeps its name.
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"source": str})


def build_run_outputs(
    out: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    summary_path: str | os.PathLike[str] | None = None,
    charts_dir: str | os.PathLike[str] | None = None,
    bin_s: float = 60.0,
    thumbnails: bool = True,
    subtitles: bool = True,
) -> RunOutputs:
    """Everything of issue #17 from a finished run's files: timeline and track tables, subtitles and thumbnails
    (into the charts folder, beside the timeline charts), and the report.

    `out` is the results file (CSV or Parquet); the summary and charts folder default to the run's own
    (`<out stem>_summary<ext>`, `<out stem>_charts/`). Media files are found through the summary's `path`.
    """
    from . import subtitles as subs_mod
    from . import thumbnails as thumbs_mod
    from . import timeline as tl
    from .charts import chart_filename

    out = Path(out)
    summary_file = Path(summary_path) if summary_path else out.with_name(f"{out.stem}_summary{out.suffix}")
    charts = Path(charts_dir) if charts_dir else out.with_name(f"{out.stem}_charts")
    rows = _read(out)
    summary = _read(summary_file)
    durations = {str(s): d for s, d in zip(summary["source"], summary["duration_s"])}
    by_source = {str(s): g for s, g in rows.groupby("source", sort=False)}
    timelines, tracks = [], []
    written = RunOutputs(*tl.table_paths(out), report_path(out))
    chart_files: dict[str, Path] = {}
    for f in _records(summary):
        source = str(f["source"])
        file_rows = by_source.get(source)
        if f.get("status") != "ok" or file_rows is None:
            continue
        timelines.append(tl.timeline_table(file_rows, bin_s, durations))
        tracks.append(tl.track_table(file_rows))
        if thumbnails and f.get("path"):
            try:
                written.thumbnails[source] = thumbs_mod.write_thumbnails(
                    f["path"], file_rows, charts, media_type=str(f.get("media_type") or "video")
                )
            except Exception:  # noqa: BLE001 - the file moved or changed since the run: no pictures, no failure
                written.thumbnails[source] = {}
        if f.get("media_type") == "video":
            if subtitles:
                vtt = subs_mod.write_webvtt(file_rows, charts / subs_mod.subtitle_filename(source))
                if vtt:
                    written.subtitles[source] = vtt
            chart = charts / chart_filename(source)
            if chart.is_file():
                chart_files[source] = chart
    timeline = tl.concat(timelines, tl.TIMELINE_COLUMNS)
    track_frame = tl.concat(tracks, tl.TRACK_COLUMNS)
    tl.write_table(timeline, written.timeline_csv)
    tl.write_table(track_frame, written.tracks_csv)
    overview = charts / "overview.png"
    write_report(
        written.report,
        summary=summary,
        metadata=metadata,
        tracks=track_frame,
        timeline=timeline,
        overview_chart=overview if overview.is_file() else None,
        timeline_charts=chart_files,
        thumbnails=written.thumbnails,
        subtitles=written.subtitles,
    )
    return written
