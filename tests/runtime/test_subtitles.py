"""WebVTT subtitles: cue making, the format (parsed back: header, HH:MM:SS.mmm, monotonic, no overlap)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emotion_batch.output import subtitles as st
from emotion_batch.schema import Row, rows_frame

from .test_timeline import face

TIMING = re.compile(r"^\d{2}:[0-5]\d:[0-5]\d\.\d{3} --> \d{2}:[0-5]\d:[0-5]\d\.\d{3}$")


def check_format(text: str) -> list[st.Cue]:
    """Strict checks on the text, then the parsed cues' order."""
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n")
    timing_lines = [line for line in text.splitlines() if "-->" in line]
    assert timing_lines and all(TIMING.match(line) for line in timing_lines), timing_lines
    cues = st.parse_webvtt(text)
    assert len(cues) == len(timing_lines)
    for cue in cues:
        assert cue.start_s < cue.end_s and cue.lines
    for a, b in zip(cues, cues[1:]):
        assert a.end_s <= b.start_s, "cues overlap or go back in time"
    return cues


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "00:00:00.000"), (1.5, "00:00:01.500"), (3661.25, "01:01:01.250"), (59.9996, "00:01:00.000"),
     (100 * 3600, "100:00:00.000"), (-1, "00:00:00.000")],
)  # fmt: skip
def test_format_timestamp(seconds: float, text: str) -> None:
    assert st.format_timestamp(seconds) == text


def test_one_track_changing_emotion() -> None:
    rows = rows_frame([face("v.mp4", float(t), 2, "happy" if t < 5 else "sad", p=0.8) for t in range(10)])
    cues = check_format(st.render_webvtt(st.cues(st.track_segments(rows, window_s=0))))
    assert [(c.start_s, c.end_s, c.lines) for c in cues] == [
        (0.0, 5.0, ("track 2: happy 0.80",)),
        (5.0, 10.0, ("track 2: sad 0.80",)),
    ]


def test_two_tracks_give_one_line_each_sorted_and_gaps_end_cues() -> None:
    rows = [face("v.mp4", t / 2, 0, "happy", p=0.6) for t in range(20)]  # 0-10 s, 0.5 s steps
    rows += [face("v.mp4", t / 2, 1, "fear", index=1, n=2) for t in range(4, 8)]  # 2-4 s
    rows += [face("v.mp4", t / 2, 1, "fear", index=1, n=2) for t in range(14, 16)]  # 7-8 s, after a gap
    rows += [Row.no_face("v.mp4", 500, 10.0)]
    cues = check_format(st.render_webvtt(st.cues(st.track_segments(rows_frame(rows), window_s=0))))
    spans = [(c.start_s, c.end_s, len(c.lines)) for c in cues]
    assert spans == [(0.0, 2.0, 1), (2.0, 4.0, 2), (4.0, 7.0, 1), (7.0, 8.0, 2), (8.0, 10.0, 1)]
    assert cues[1].lines == ("track 0: happy 0.60", "track 1: fear 0.70")


def test_smoothing_by_default_removes_a_one_sample_flicker() -> None:
    rows = [face("v.mp4", float(t), 0, "sad" if t == 5 else "happy") for t in range(12)]
    raw = st.cues(st.track_segments(rows_frame(rows), window_s=0))
    smooth = st.cues(st.track_segments(rows_frame(rows)))  # the chart's window: 3 samples here
    assert len(raw) == 3 and len(smooth) == 1 and smooth[0].lines[0].startswith("track 0: happy")


def test_track_ids_reused_across_shots_are_named_by_shot() -> None:
    frame = rows_frame([face("v.mp4", float(t), 0, "happy") for t in range(6)])
    frame["shot"] = [0, 0, 0, 1, 1, 1]
    lines = {line for c in st.cues(st.track_segments(frame, window_s=0)) for line in c.lines}
    assert lines == {"shot 0 track 0: happy 0.70", "shot 1 track 0: happy 0.70"}


def test_write_webvtt(tmp_path: Path) -> None:
    rows = rows_frame([face("clips/x y.mp4", t * 0.5, 0, "neutral") for t in range(6)])
    path = st.write_webvtt(rows, tmp_path / st.subtitle_filename("clips/x y.mp4"), note="model abc --> x")
    assert path is not None and path.suffix == ".vtt" and " " not in path.name
    text = path.read_text(encoding="utf-8")
    assert "NOTE model abc -> x" in text
    assert check_format(text)[-1].end_s == 3.0  # the last sample stands for one sampling step
    nothing = rows_frame([Row.no_face("v.mp4", 0, 0.0), Row.no_face("v.mp4", 25, 1.0)])
    assert st.write_webvtt(nothing, tmp_path / "none.vtt") is None and not (tmp_path / "none.vtt").exists()


def test_cue_text_is_escaped_and_parsed_back() -> None:
    cue = st.Cue(0.0, 1.0, ("a < b & c > d",))
    text = st.render_webvtt([cue, st.Cue(1.0, 1.0004, ("too short",))])
    assert "a &lt; b &amp; c &gt; d" in text and "too short" not in text
    assert st.parse_webvtt(text) == [cue]


@pytest.mark.parametrize(
    "text",
    ["", "WEBVT\n\n1\n00:00:00.000 --> 00:00:01.000\nx\n", "WEBVTT\n\n1\n00:00:00,000 --> 00:00:01.000\nx\n",
     "WEBVTT\n\n1\n0:00:00.000 --> 00:00:01.000\nx\n", "WEBVTT\n\nx\n00:00:00.000 --> 00:00:01.000\nx\n"],
)  # fmt: skip
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        st.parse_webvtt(text)
