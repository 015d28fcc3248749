"""Both video readers give the same frames, indices, timestamps and pixels; PyAV skips frames nobody needs."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from emotion_batch.media import decoding
from emotion_batch.media.decoding import DECODER_ENV, OpenCVReader, PyAVReader, open_reader
from emotion_batch.media.sampling import FrameSampler, SamplingPlan, _sampled_after

from .environment import SHARED
from .media_factory import read_frame_index, write_bframe_video, write_indexed_video

pytest.importorskip("av", reason="PyAV is not installed; only the OpenCV reader can be used")

PLANS = [
    {"fps": 2},
    {"fps": 5},
    {"fps": 7.3},
    {"fps": 25},
    {"fps": 60},
    {"fps": 5, "start": 0.9, "end": 2.5},
    {"fps": 3, "max_frames": 4},
]


@pytest.fixture(scope="module")
def bframe_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decoding") / "bframes.mp4"
    write_bframe_video(path, 120, fps=25)
    return path


@pytest.fixture(scope="module")
def mp4v_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decoding") / "mp4v.mp4"
    write_indexed_video(path, 90, fps=30.0)
    return path


def sampled(
    path: Path, decoder: str, monkeypatch: pytest.MonkeyPatch, **plan
) -> list[tuple[int, float, bytes]]:
    monkeypatch.setenv(DECODER_ENV, decoder)
    sampler = FrameSampler(path, "video", SamplingPlan(**plan), prefetch=0)
    frames = [(f.index, f.timestamp_s, f.image.tobytes()) for f in sampler]
    return frames


@pytest.mark.parametrize("plan", PLANS, ids=str)
def test_readers_agree_on_bframe_video(
    bframe_video: Path, plan: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = sampled(bframe_video, "opencv", monkeypatch, **plan)
    assert reference, "the reference reader found no frames"
    assert sampled(bframe_video, "auto", monkeypatch, **plan) == reference


@pytest.mark.parametrize("plan", PLANS[:3], ids=str)
def test_sampled_frames_are_the_right_ones(
    bframe_video: Path, plan: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DECODER_ENV, "auto")
    for frame in FrameSampler(bframe_video, "video", SamplingPlan(**plan), prefetch=0):
        assert read_frame_index(frame.image) == frame.index
        assert frame.timestamp_s == pytest.approx(frame.index / 25, abs=1e-6)


def test_pyav_skips_unreferenced_frames(bframe_video: Path) -> None:
    reader = PyAVReader(bframe_video)
    reader.skip_rule = functools.partial(_sampled_after, start=0.0, rate=2.0)
    try:
        given = [p.index for p in reader.pictures()]
    finally:
        reader.close()
    assert reader.frames_read == 120
    assert len(given) < 100, "no B-frame was skipped"
    assert given == sorted(given) and len(set(given)) == len(given)
    everything = PyAVReader(bframe_video)
    try:
        assert [p.index for p in everything.pictures()] == list(range(120))  # no rule: nothing skipped
    finally:
        everything.close()


@pytest.mark.parametrize(
    ("before", "now", "expected"),
    [
        (0.16, 0.2, True),  # 0.2 is a target (rate 5)
        (0.21, 0.24, False),
        (0.2, 0.24, True),  # the target sits on `before` itself: within the margin, so kept (errs to yes)
        (0.36, 0.40, True),
        (0.41, 0.59, False),
        (0.399999, 0.44, True),  # a target just after `before` within float noise: kept
        (-0.04, 0.0, True),  # the first frame
    ],
)
def test_skip_rule_table(before: float, now: float, expected: bool) -> None:
    assert _sampled_after(before, now, start=0.0, rate=5.0) is expected


def test_every_mode_uses_opencv(bframe_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DECODER_ENV, raising=False)
    reader = open_reader(bframe_video, can_skip=False)
    reader.close()
    assert isinstance(reader, OpenCVReader)


def test_environment_forces_opencv(bframe_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DECODER_ENV, "opencv")
    reader = open_reader(bframe_video, can_skip=True)
    reader.close()
    assert isinstance(reader, OpenCVReader)


def test_unopenable_file_falls_back_to_opencv_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DECODER_ENV, raising=False)
    path = tmp_path / "noise.mp4"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(decoding.MediaError, match="cannot open as a video"):
        open_reader(path, can_skip=True)


@pytest.mark.parametrize("plan", [{"fps": 5}, {"fps": 30}], ids=str)
def test_readers_agree_on_mp4v_and_vfr(
    mp4v_video: Path, vfr_video, plan: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in (mp4v_video, vfr_video[0]):
        assert sampled(path, "auto", monkeypatch, **plan) == sampled(path, "opencv", monkeypatch, **plan)


def shared_videos() -> list[Path]:
    folder = SHARED / "media" / "videos"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.skipif(not shared_videos(), reason=f"no shared videos under {SHARED / 'media' / 'videos'}")
@pytest.mark.parametrize("path", shared_videos(), ids=lambda p: p.name)
def test_readers_agree_on_real_videos(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sampled(path, "auto", monkeypatch, fps=5) == sampled(path, "opencv", monkeypatch, fps=5)
