"""Summary numbers and charts: the PNGs exist, have the expected size, and are not blank."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emotion_batch.analysis import file_stats
from emotion_batch.output.charts import chart_filename, overview_chart, timeline_chart
from emotion_batch.schema import EMOTIONS, rows_frame, summary_frame


def rows_for(source: str, tracks: int, samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(samples):
        t = k * 0.5
        if k % 7 == 3:  # a frame without faces
            rows.append((source, k * 12, t, 0, 0, *([None] * 16)))
            continue
        for track in range(tracks):
            p = rng.dirichlet(np.ones(7) + 4 * np.eye(7)[(track * 3 + k // 10) % 7])
            rows.append(
                (
                    source,
                    k * 12,
                    t,
                    0,
                    tracks,
                    track,
                    track,
                    10,
                    10,
                    50,
                    60,
                    0.9,
                    *p,
                    EMOTIONS[int(np.argmax(p))],
                    float(p.max()),
                )
            )
    return rows_frame(rows)


def test_file_stats() -> None:
    rows = rows_for("v.mp4", tracks=2, samples=14)
    stats = file_stats(list(rows.itertuples(index=False, name="Row")))
    assert stats["frames_sampled"] == 14 and stats["frames_with_faces"] == 12
    assert stats["faces"] == 24 and stats["tracks"] == 2
    assert sum(stats[f"mean_{e}"] for e in EMOTIONS) == pytest.approx(1.0)
    assert stats["dominant_emotion"] == max(EMOTIONS, key=lambda e: stats[f"mean_{e}"])
    empty = file_stats(list(rows_for("v.mp4", tracks=0, samples=3).itertuples(index=False, name=None)))
    assert (empty["faces"], empty["tracks"], empty["dominant_emotion"]) == (0, 0, None)


@pytest.mark.parametrize(
    ("source", "name"),
    [("a.mp4", "a.mp4.timeline.png"), ("day1/cam2.mov", "day1__cam2.mov.timeline.png")],
)
def test_chart_filename(source: str, name: str) -> None:
    assert chart_filename(source) == name


def test_chart_filenames_of_lossy_flattenings_differ() -> None:
    """`day 1/cam:2.mov` and `day_1/cam_2.mov` flatten alike: a tag of the source's digest tells them apart."""
    a, b = chart_filename("day 1/cam:2.mov"), chart_filename("day_1/cam_2.mov")
    assert a != b and a.startswith("day_1__cam_2.mov-") and a.endswith(".timeline.png")


def assert_real_png(path: Path, min_width: int, min_height: int) -> None:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    assert image.shape[1] >= min_width and image.shape[0] >= min_height
    assert image.std() > 20, "chart looks blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, (
        "chart has too few colours to hold lines and text"
    )


def test_timeline_chart(tmp_path: Path) -> None:
    path = timeline_chart(rows_for("clips/v.mp4", tracks=2, samples=40), "clips/v.mp4", tmp_path / "t.png")
    assert path == tmp_path / "t.png"
    assert_real_png(path, 1000, 450)


def test_timeline_chart_titles_every_track_and_shows_faces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A track with a gap reads its real range (not nan-nan); tracks beyond the panels are named in a note."""
    import pandas as pd
    from PIL import Image

    from emotion_batch.output import charts, raster

    rows = rows_for("v.mp4", tracks=12, samples=40)
    rows = rows[~((rows["track_id"] == 0) & rows["timestamp_s"].between(5, 12))]  # a gap in track 0
    rows = rows[~((rows["track_id"] >= 8) & (rows["timestamp_s"] > 3))]  # four short tracks
    face = tmp_path / "face.jpg"
    cv2.imwrite(str(face), np.full((64, 64, 3), (0, 0, 255), np.uint8))
    texts: list[str] = []
    saved = raster.Canvas.save

    def spy(canvas: raster.Canvas, path: Path) -> Path:  # the texts drawn on the PNG
        texts.extend(t.text for t in canvas.texts)
        return saved(canvas, path)

    monkeypatch.setattr(raster.Canvas, "save", spy)
    path = charts.timeline_chart(pd.DataFrame(rows), "v.mp4", tmp_path / "t.png", pictures={0: face})
    titles = [t for t in texts if t.startswith("track ")]
    notes = [t for t in texts if "more track" in t]
    assert path is not None and len(titles) == charts.MAX_TRACKS_PER_CHART
    assert not any("nan" in t for t in titles)
    track0 = next(t for t in titles if t.startswith("track 0:"))
    kept = rows[rows["track_id"] == 0]
    assert f"{len(kept)} samples, {kept['timestamp_s'].min():.1f}-{kept['timestamp_s'].max():.1f} s" in track0
    assert any("4 more track(s)" in n and "8, 9, 10, 11" in n for n in notes)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert ((picture[..., 0] > 200) & (picture[..., 1] < 60) & (picture[..., 2] < 60)).sum() > 500  # the face


def test_timeline_chart_without_faces_draws_nothing(tmp_path: Path) -> None:
    assert timeline_chart(rows_for("v.mp4", tracks=0, samples=5), "v.mp4", tmp_path / "t.png") is None
    assert not (tmp_path / "t.png").exists()


def test_overview_chart(tmp_path: Path) -> None:
    records = []
    for i, name in enumerate(["a.jpg", "b/c.mp4", "d.png"]):
        rows = rows_for(name, tracks=1 + i, samples=10, seed=i)
        records.append(
            {"source": name, "status": "ok", **file_stats(list(rows.itertuples(index=False, name="Row")))}
        )
    records.append({"source": "bad.mp4", "status": "error", "error": "cannot open as a video"})
    path = overview_chart(summary_frame(records), tmp_path / "overview.png")
    assert_real_png(path, 1000, 250)


def test_overview_shows_every_file(tmp_path: Path) -> None:
    """No file is dropped: files without faces and failed files are listed, more files go on more pages."""
    from emotion_batch.output.charts import FILES_PER_OVERVIEW, overview_charts

    stats = file_stats(list(rows_for("a.mp4", tracks=1, samples=10).itertuples(index=False, name="Row")))
    records = [{"source": f"f{i:03d}.mp4", "status": "ok", **stats} for i in range(FILES_PER_OVERVIEW + 5)]
    records.append({"source": "none.jpg", "status": "ok", "faces": 0})
    records.append({"source": "bad.mp4", "status": "error", "error_kind": "truncated"})
    pages = overview_charts(summary_frame(records), tmp_path)
    assert [p.name for p in pages] == ["overview.png", "overview-2.png"]
    assert_real_png(pages[1], 1000, 250)
    assert overview_charts(summary_frame([]), tmp_path / "x") == []


def test_overview_pages_stop_with_a_note_counting_the_files_left_out(tmp_path: Path) -> None:
    """Thousands of files draw MAX_OVERVIEW_PAGES pages; the last one says how many files follow."""
    from emotion_batch.output.charts import (
        FILES_PER_OVERVIEW,
        MAX_OVERVIEW_PAGES,
        overview_charts,
        overview_pages,
    )

    stats = file_stats(list(rows_for("a.jpg", tracks=1, samples=1).itertuples(index=False, name="Row")))
    total = FILES_PER_OVERVIEW * MAX_OVERVIEW_PAGES + 7
    summary = summary_frame([{"source": f"p{i:04d}.jpg", "status": "ok", **stats} for i in range(total)])
    pages = overview_pages(summary)
    assert [page for page, _, _ in pages] == list(range(1, MAX_OVERVIEW_PAGES + 1))
    assert [more for _, _, more in pages] == [0] * (MAX_OVERVIEW_PAGES - 1) + [7]
    assert sum(len(part) for _, part, _ in pages) + 7 == total
    drawn = overview_charts(summary, tmp_path)
    assert len(drawn) == MAX_OVERVIEW_PAGES
    assert_real_png(drawn[-1], 1000, 250)
    short = overview_pages(summary.iloc[: FILES_PER_OVERVIEW + 1])
    assert [more for _, _, more in short] == [0, 0]
