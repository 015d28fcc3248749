"""Minute-by-minute and per-track tables, the one "dominant emotion" rule, safe output names, and thumbnails."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from emotion_batch.analysis import file_stats
from emotion_batch.output import thumbnails as th
from emotion_batch.output import timeline as tl
from emotion_batch.output.charts import chart_filename
from emotion_batch.schema import EMOTIONS, Row, rows_frame

from .media_factory import read_frame_index, write_bframe_video


def one_hot(emotion: str, p: float = 0.7) -> list[float]:
    rest = (1 - p) / (len(EMOTIONS) - 1)
    return [p if e == emotion else rest for e in EMOTIONS]


def face(source: str, t: float, track: int, emotion: str, *, index: int = 0, n: int = 1, frame=None,
         box=(10, 10, 40, 40), score: float = 0.9, p: float = 0.7, shot: int = 0) -> Row:  # fmt: skip
    probs = one_hot(emotion, p)
    k = int(np.argmax(probs))
    frame_index = round(t * 25) if frame is None else frame
    return Row(source, frame_index, t, shot, n, index, track, *box, score, *probs, EMOTIONS[k], probs[k])


def video_rows(seconds: int = 150, source: str = "clips/a.mp4") -> list[Row]:
    """Track 0 in view all along (happy, then sad after 90 s); track 1 from 30 to 69 s; no face at 100-109 s."""
    rows: list[Row] = []
    for t in range(seconds):
        if 100 <= t < 110:
            rows.append(Row.no_face(source, t * 25, float(t)))
            continue
        both = 30 <= t < 70
        rows.append(face(source, float(t), 0, "happy" if t < 90 else "sad", n=1 + both))
        if both:
            rows.append(face(source, float(t), 1, "angry", index=1, n=2))
    return rows


@pytest.mark.parametrize(
    ("means", "expected"),
    [
        ({f"mean_{e}": v for e, v in zip(EMOTIONS, [0.1, 0, 0, 0.5, 0.4, 0, 0])}, "happy"),
        (dict(zip(EMOTIONS, [0.1, 0, 0, 0.2, 0.6, 0, 0.1])), "neutral"),
        ([0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05], "angry"),  # a tie goes to the first in EMOTIONS order
        ([math.nan] * 7, None),
        ([math.nan, 0.2, 0.1, math.nan, 0.3, 0, 0], "neutral"),
    ],
)
def test_dominant_emotion(means, expected) -> None:
    assert tl.dominant_emotion(means) == expected


def test_dominant_emotion_is_the_summary_rule() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        probs = rng.dirichlet(np.ones(7) * 0.5, size=int(rng.integers(1, 20)))
        rows = [
            Row(
                "a.mp4",
                i,
                i / 2,
                0,
                1,
                0,
                0,
                0,
                0,
                9,
                9,
                0.9,
                *p.tolist(),
                EMOTIONS[int(np.argmax(p))],
                float(p.max()),
            )
            for i, p in enumerate(probs)
        ]
        stats = file_stats(rows)
        assert tl.dominant_emotion(stats) == stats["dominant_emotion"]


def test_timeline_bins_per_track_and_minute() -> None:
    rows = rows_frame(video_rows()).drop(columns="shot")  # rows of an older format: no shot column
    table = tl.timeline_table(rows, 60, durations={"clips/a.mp4": 150.0})
    assert list(table.columns) == list(tl.TIMELINE_COLUMNS)
    track0 = table[table["track_id"] == 0]
    assert track0[["bin_start_s", "bin_end_s"]].values.tolist() == [[0, 60], [60, 120], [120, 150]]
    assert track0["samples"].tolist() == [60, 50, 30]  # 10 s without a face in the second minute
    assert track0["dominant_emotion"].tolist() == ["happy", "happy", "sad"]  # 30 happy + 20 sad in minute 2
    track1 = table[table["track_id"] == 1]
    assert track1["samples"].tolist() == [30, 10] and set(track1["dominant_emotion"]) == {"angry"}
    assert table["shot"].isna().all()  # rows without a shot column: the column is there, empty
    assert table["samples"].sum() == (rows["n_faces"] > 0).sum()
    means = table.loc[0, list(tl.MEAN_COLUMNS)].to_numpy(dtype=float)
    assert np.allclose(means, one_hot("happy"))


def test_timeline_bin_width_and_no_duration() -> None:
    table = tl.timeline_table(rows_frame(video_rows(40)), bin_s=15)
    track0 = table[table["track_id"] == 0]
    assert track0["bin_start_s"].tolist() == [0, 15, 30] and track0["bin_end_s"].tolist() == [15, 30, 45]
    with pytest.raises(ValueError):
        tl.timeline_table(rows_frame(video_rows(5)), bin_s=0)


def test_images_get_one_bin_per_face_and_no_face_frames_nothing() -> None:
    rows = rows_frame(
        [
            face("p/two.jpg", 0.0, 0, "happy", n=2, frame=0),
            face("p/two.jpg", 0.0, 1, "sad", index=1, n=2, frame=0),
            Row.no_face("p/none.jpg", 0, 0.0),
        ]
    )
    table = tl.timeline_table(rows, durations={"p/two.jpg": 0.0, "p/none.jpg": 0.0})
    assert table[["source", "track_id", "bin_start_s", "bin_end_s", "samples"]].values.tolist() == [
        ["p/two.jpg", 0, 0.0, 0.0, 1],
        ["p/two.jpg", 1, 0.0, 0.0, 1],
    ]
    tracks = tl.track_table(rows)
    assert tracks["seconds_in_view"].tolist() == [0.0, 0.0]
    assert tl.timeline_table(rows_frame([Row.no_face("v.mp4", 0, 0.0)])).empty


def test_shots_split_tracks_that_reuse_ids() -> None:
    rows = rows_frame(video_rows(20))
    rows["shot"] = (rows["timestamp_s"] >= 10).astype(int)
    tracks = tl.track_table(rows)
    assert tracks[["shot", "track_id", "first_seen_s", "last_seen_s", "samples"]].values.tolist() == [
        [0, 0, 0.0, 9.0, 10],
        [1, 0, 10.0, 19.0, 10],
    ]
    assert tl.timeline_table(rows)["shot"].tolist() == [0, 1]


def test_track_table_seconds_in_view_counts_samples_not_the_span() -> None:
    rows = rows_frame(video_rows())
    tracks = tl.track_table(rows)
    assert list(tracks.columns) == list(tl.TRACK_COLUMNS)
    t0 = tracks[tracks["track_id"] == 0].iloc[0]
    assert (t0["first_seen_s"], t0["last_seen_s"], t0["samples"]) == (0.0, 149.0, 140)
    assert t0["sampling_interval_s"] == 1.0 and t0["seconds_in_view"] == 140.0  # the 10 s away do not count
    assert t0["dominant_emotion"] == "happy"  # 90 s happy against 50 s sad
    t1 = tracks[tracks["track_id"] == 1].iloc[0]
    assert (t1["first_seen_s"], t1["last_seen_s"], t1["seconds_in_view"]) == (30.0, 69.0, 40.0)
    assert tl.track_table(rows, interval_s=0.5)["seconds_in_view"].tolist() == [70.0, 20.0]


def test_tables_write_atomically(tmp_path: Path) -> None:
    timeline_path, tracks_path = tl.table_paths(tmp_path / "run" / "results.csv")
    assert (timeline_path.name, tracks_path.name) == ("results_timeline.csv", "results_tracks.csv")
    table = tl.concat([tl.track_table(rows_frame(video_rows(30)))], tl.TRACK_COLUMNS)
    tl.write_table(table, tracks_path)
    back = pd.read_csv(tracks_path)
    assert list(back.columns) == list(tl.TRACK_COLUMNS) and len(back) == 1
    assert not list(tracks_path.parent.glob(".*partial"))
    assert list(tl.concat([], tl.TIMELINE_COLUMNS).columns) == list(tl.TIMELINE_COLUMNS)


def test_a_failed_table_write_keeps_the_previous_table_and_no_hidden_file(tmp_path: Path) -> None:
    path = tmp_path / "results_tracks.csv"
    path.write_text("the previous table\n")

    class Unwritable:
        def __str__(self) -> str:
            raise RuntimeError("this cell cannot be written")

    with pytest.raises(RuntimeError, match="cannot be written"):  # fails while writing the hidden file
        tl.write_table(pd.DataFrame({"a": [1, 2], "b": ["x", Unwritable()]}), path)
    assert path.read_text() == "the previous table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results_tracks.csv"]


def test_safe_filename() -> None:
    assert tl.safe_filename("clips/a.mp4", ".timeline.png") == chart_filename("clips/a.mp4")
    names = {tl.safe_filename(s, ".vtt") for s in ("a/b.mp4", "a__b.mp4", "a b.mp4", "a_b.mp4", "a?b.mp4")}
    assert len(names) == 5
    long_names = [f"{'deep/' * 60}{'é' * 80}{i}.mp4" for i in range(3)]
    flat = [tl.safe_filename(s, ".track-12.jpg") for s in long_names]
    assert len(set(flat)) == 3
    for name in flat:
        assert len(name.encode()) <= tl.MAX_NAME_BYTES and name.endswith(".track-12.jpg") and "/" not in name
        name.encode().decode("utf-8")  # cut on a character boundary


def test_best_samples_pick_sure_large_faces() -> None:
    rows = rows_frame(
        [
            face("v.mp4", 0.0, 3, "happy", box=(0, 0, 50, 50), score=0.9),
            face("v.mp4", 1.0, 3, "happy", box=(0, 0, 80, 80), score=0.8),  # 5120 > 2250: the pick
            face("v.mp4", 2.0, 3, "happy", box=(0, 0, 100, 100), score=0.4),
            face("v.mp4", 2.0, 4, "sad", index=1, box=(5, 5, 20, 30), score=0.7),
            Row.no_face("v.mp4", 75, 3.0),
        ]
    )
    picks = th.best_samples(rows)
    assert [(p.track_id, p.frame_index, p.box) for p in picks] == [
        (3, 25, (0, 0, 80, 80)),
        (4, 50, (5, 5, 20, 30)),
    ]


def test_crop_pads_at_the_edges() -> None:
    image = np.full((100, 200, 3), 255, np.uint8)
    piece = th.crop(image, (0, 0, 40, 40), size=64)
    assert piece.shape == (64, 64, 3)
    assert piece[0, 0].max() < 100 and piece[-1, -1].min() > 200  # padding top-left, picture bottom-right


def test_thumbnails_decode_the_right_frames(tmp_path: Path) -> None:
    """H.264 with B-frames: the frames that are skipped must not shift the frame picked."""
    pytest.importorskip("av", reason="PyAV writes the B-frame test video")
    video = tmp_path / "b.mp4"
    write_bframe_video(video, 120)
    wanted = [7, 8, 61, 119]
    rows = rows_frame(
        [
            face("b.mp4", i / 25, k, "happy", frame=i, box=(0, 0, 160, 96), index=0)
            for k, i in enumerate(wanted)
        ]
    )
    decoded = {
        pick.frame_index: read_frame_index(image) for pick, image in th._frames(video, th.best_samples(rows))
    }
    assert decoded == {i: i for i in wanted}

    written = th.write_thumbnails(video, rows, tmp_path / "charts", size=96)
    assert sorted(written) == [(0, k) for k in range(len(wanted))]
    assert written[(0, 2)].name == "b.mp4.shot-0.track-2.jpg"
    assert all(cv2.imread(str(p)).shape == (96, 96, 3) for p in written.values())


def test_thumbnails_of_an_image(tmp_path: Path) -> None:
    image = np.zeros((120, 200, 3), np.uint8)
    image[20:60, 30:70] = (0, 0, 255)
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), image)
    rows = rows_frame([face("p.png", 0.0, 0, "happy", frame=0, box=(30, 20, 40, 40))])
    written = th.write_thumbnails(path, rows, tmp_path / "charts", media_type="image")
    thumb = cv2.imread(str(written[(0, 0)]))
    assert thumb[64, 64, 2] > 200 and thumb[64, 64, 0] < 50  # the red box at the centre
    assert th.write_thumbnails(path, rows_frame([Row.no_face("p.png", 0, 0.0)]), tmp_path / "c") == {}


def test_a_placed_thumbnail_is_a_second_name_of_the_kept_one(tmp_path: Path) -> None:
    kept = th.save_jpeg(tmp_path / "kept.jpg", b"first picture")
    target = tmp_path / "charts" / "t.jpg"
    target.parent.mkdir()
    assert th.place(kept, target) == target
    assert target.read_bytes() == b"first picture" and target.stat().st_ino == kept.stat().st_ino
    newer = th.save_jpeg(tmp_path / "kept.jpg", b"second picture")  # replaced, never rewritten in place
    assert target.read_bytes() == b"first picture"
    th.place(newer, target)  # replaces what is there
    assert target.read_bytes() == b"second picture" and target.stat().st_nlink == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.jpg"]  # no partial left


def test_a_thumbnail_is_copied_where_it_cannot_be_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def cross_device(src: object, dst: object) -> None:  # state and charts folders on two file systems
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    kept = th.save_jpeg(tmp_path / "kept.jpg", b"a picture")
    (tmp_path / "t.jpg").write_bytes(b"old")
    monkeypatch.setattr(os, "link", cross_device)
    assert th.place(kept, tmp_path / "t.jpg").read_bytes() == b"a picture"
    assert (tmp_path / "t.jpg").stat().st_ino != kept.stat().st_ino


def test_dominant_emotion_ignores_missing_values() -> None:
    assert tl.dominant_emotion([pd.NA, None, 0.1, 0.2, math.nan, 0.0, 0.0]) == "happy"


@pytest.mark.parametrize(
    "means",
    [
        [0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1],
        [0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05],  # a tie: the first in EMOTIONS order
        [math.nan, 0.1, math.nan, 0.6, 0.3, 0.0, 0.0],
        [math.nan] * 7,
        [0.0] * 7,
    ],
)
def test_dominant_emotions_of_an_array_follow_the_one_rule(means: list[float]) -> None:
    from emotion_batch.schema import dominant_emotions

    assert dominant_emotions([means, means]) == [tl.dominant_emotion(means)] * 2
