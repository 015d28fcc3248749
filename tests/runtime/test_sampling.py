"""Sampling picks the right frames at the right container times, on constant and variable frame rates."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from emotion_batch.media.sampling import FrameSampler, MediaError, SamplingPlan

from .environment import VFR_DURATIONS
from .media_factory import astronaut_bgr, read_frame_index, write_indexed_video


@pytest.fixture(scope="module")
def cfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 frames at 25 fps (4 s); frame i shows i in binary, so decoded pixels prove which frame was read."""
    path = tmp_path_factory.mktemp("cfr") / "cfr.mp4"
    write_indexed_video(path, 100, fps=25.0)
    return path


def sample(path: Path, **plan) -> list[tuple[int, float, int]]:
    """(frame index, timestamp, index read from the pixels) for each sampled frame."""
    return [
        (f.index, f.timestamp_s, read_frame_index(f.image))
        for f in FrameSampler(path, "video", SamplingPlan(**plan))
    ]


def first_at_or_after(
    pts: list[float], rate: float, start: float = 0.0, end: float | None = None
) -> list[int]:
    """The specification of --fps: for each target start + k/rate, the first frame whose time is >= it."""
    chosen: list[int] = []
    last = pts[-1] if end is None else min(end, pts[-1])
    k = 0
    while start + k / rate <= last + 1e-9:
        target = start + k / rate
        index = next(i for i, t in enumerate(pts) if t >= target - 1e-9)
        if index not in chosen:
            chosen.append(index)
        k += 1
    return chosen


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({}, [0, 13, 25, 38, 50, 63, 75, 88]),  # default: 2 per second
        ({"fps": 5}, list(range(0, 100, 5))),
        ({"fps": 1}, [0, 25, 50, 75]),
        ({"fps": 0.4}, [0, 63]),
        ({"fps": 100}, list(range(100))),  # faster than the video: each frame once
        ({"every": 10}, list(range(0, 100, 10))),
        ({"every": 1}, list(range(100))),
        ({"fps": 2, "start": 1.0, "end": 2.0}, [25, 38, 50]),
        ({"every": 10, "start": 1.02}, [26, 36, 46, 56, 66, 76, 86, 96]),
        ({"fps": 5, "max_frames": 3}, [0, 5, 10]),
        ({"every": 7, "end": 1.0}, [0, 7, 14, 21]),
    ],
)
def test_constant_rate_sampling_picks_expected_frames(
    cfr_video: Path, plan: dict, expected: list[int]
) -> None:
    got = sample(cfr_video, **plan)
    assert [index for index, _, _ in got] == expected
    assert [decoded for _, _, decoded in got] == expected, "the pixels returned are not the sampled frame's"
    assert [t for _, t, _ in got] == pytest.approx([i * 0.04 for i in expected], abs=1e-6)


def test_fixture_is_really_variable_frame_rate(vfr_video: tuple[Path, list[float]]) -> None:
    path, pts = vfr_video
    cap = cv2.VideoCapture(str(path))
    meta_fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    steps = np.diff(pts)
    assert steps.min() == pytest.approx(0.02) and steps.max() == pytest.approx(0.1)
    # index / fps would misplace frames by up to this much: timestamps must come from the container.
    assert max(abs(i / meta_fps - t) for i, t in enumerate(pts)) > 0.3


@pytest.mark.parametrize(
    "plan",
    [{"fps": 5}, {"fps": 2}, {"fps": 12.5}, {"fps": 3, "start": 0.5}, {"fps": 4, "start": 0.7, "end": 2.5}],
)
def test_fps_on_variable_frame_rate_uses_container_timestamps(
    vfr_video: tuple[Path, list[float]], plan
) -> None:
    path, pts = vfr_video
    got = sample(path, **plan)
    expected = first_at_or_after(pts, plan["fps"], plan.get("start", 0.0), plan.get("end"))
    assert [index for index, _, _ in got] == expected
    assert [decoded for _, _, decoded in got] == expected
    assert [t for _, t, _ in got] == pytest.approx([pts[i] for i in expected], abs=1e-6)


def test_vfr_sampling_at_5_fps_explicitly(vfr_video: tuple[Path, list[float]]) -> None:
    """Spelled out: 25 fps for 0.8 s, 10 fps until 2.3 s, then 50 fps; one sample every 0.2 s."""
    path, _ = vfr_video
    got = sample(path, fps=5)
    assert [(i, round(t, 3)) for i, t, _ in got] == [
        (0, 0.0), (5, 0.2), (10, 0.4), (15, 0.6), (20, 0.8), (22, 1.0), (24, 1.2), (26, 1.4), (28, 1.6),
        (30, 1.8), (32, 2.0), (34, 2.2), (40, 2.4), (50, 2.6),
    ]  # fmt: skip


def test_every_frame_matches_frame_count(vfr_video: tuple[Path, list[float]]) -> None:
    path, pts = vfr_video
    sampler = FrameSampler(path, "video", SamplingPlan(every=1))
    frames = list(sampler)
    assert len(frames) == len(VFR_DURATIONS) == sampler.frames_decoded
    assert pts[-1] < sampler.duration_s < pts[-1] + 0.1


def test_video_duration_is_measured_when_read_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "ten.mp4"
    write_indexed_video(path, 50, fps=25.0)
    sampler = FrameSampler(path, "video", SamplingPlan())
    assert len(list(sampler)) == 4  # 0, 0.5, 1.0, 1.5 s
    assert sampler.duration_s == pytest.approx(2.0)


def test_image_is_one_frame(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), astronaut_bgr())
    frames = list(FrameSampler(path, "image", SamplingPlan(fps=10)))
    assert [(f.index, f.timestamp_s, f.image.shape) for f in frames] == [(0, 0.0, (512, 512, 3))]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A portrait photo stored sideways with EXIF orientation 6 comes out the right way up."""
    from PIL import Image

    upright = astronaut_bgr()[:, 56:456]  # 512 high, 400 wide
    stored = np.rot90(upright, k=1)  # rotated 90 degrees counter-clockwise: 400 high, 512 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(cv2.cvtColor(np.ascontiguousarray(stored), cv2.COLOR_BGR2RGB)).save(
        buf, "JPEG", exif=exif, quality=95
    )
    path = tmp_path / "sideways.jpg"
    path.write_bytes(buf.getvalue())

    (frame,) = FrameSampler(path, "image", SamplingPlan())
    assert frame.image.shape == upright.shape
    assert np.abs(frame.image.astype(int) - upright).mean() < 6


@pytest.mark.parametrize(
    ("name", "content", "media_type", "message"),
    [
        ("empty.mp4", b"", "video", r"empty file \(0 bytes\)"),
        ("empty.jpg", b"", "image", r"empty file \(0 bytes\)"),
        ("text.jpg", b"not an image at all\n" * 20, "image", "cannot decode as an image"),
        ("text.mp4", b"not a video at all\n" * 20, "video", "cannot open as a video"),
        ("noise.mov", np.random.default_rng(0).bytes(50_000), "video", "cannot open as a video"),
    ],
)
def test_undecodable_files_raise_media_error(tmp_path: Path, name, content, media_type, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MediaError, match=message):
        list(FrameSampler(path, media_type, SamplingPlan()))


def test_missing_file_names_the_cause(tmp_path: Path) -> None:
    link = tmp_path / "gone.mp4"
    link.symlink_to(tmp_path / "does-not-exist.mp4")
    with pytest.raises(MediaError, match="broken symlink"):
        list(FrameSampler(link, "video", SamplingPlan()))


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"fps": 2, "every": 3}, "either fps or every"),
        ({"fps": 0}, "fps must be a positive"),
        ({"every": 0}, "every must be at least 1"),
        ({"start": -1}, "start must be >= 0"),
        ({"start": 5, "end": 2}, "must be after start"),
        ({"max_frames": 0}, "max_frames must be at least 1"),
    ],
)
def test_invalid_plans_are_rejected(plan: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingPlan(**plan)


@pytest.mark.parametrize("name", ["café ☺.jpg", os.fsdecode(b"caf\xe9-latin1.jpg")])
def test_image_names_need_not_be_ascii_or_utf8(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _, data = cv2.imencode(".jpg", astronaut_bgr())
    path.write_bytes(data.tobytes())
    (frame,) = FrameSampler(path, "image", SamplingPlan())
    assert frame.image.shape == (512, 512, 3)
