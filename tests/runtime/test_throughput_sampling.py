"""Decoding in a background thread (prefetch) changes nothing but the speed: same frames, same timestamps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from emotion_batch.media.decoding import DECODER_THREADS_ENV
from emotion_batch.media.sampling import Frame, FrameSampler, SamplingPlan, prefetched

from .environment import SHARED
from .media_factory import write_indexed_video


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "emotion-batch-decode"]


def frames_of(path: Path, prefetch: int, **plan) -> tuple[list[tuple[int, float, bytes]], int, float | None]:
    sampler = FrameSampler(path, "video", SamplingPlan(**plan), prefetch=prefetch)
    frames = [(f.index, f.timestamp_s, f.image.tobytes()) for f in sampler]
    return frames, sampler.frames_decoded, sampler.duration_s


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prefetch") / "indexed.mp4"
    write_indexed_video(path, 60, fps=25.0)
    return path


@pytest.mark.parametrize("plan", [{}, {"fps": 5}, {"every": 1}, {"fps": 5, "start": 0.5, "end": 1.5}])
def test_prefetch_yields_identical_frames(indexed_video: Path, vfr_video, plan: dict) -> None:
    for path in (indexed_video, vfr_video[0]):
        plain = frames_of(path, 0, **plan)
        assert frames_of(path, 2, **plan) == plain
        assert frames_of(path, 1, **plan) == plain
    assert not decode_threads()


def shared_videos() -> list[Path]:
    folder = SHARED / "media" / "videos"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("path", shared_videos(), ids=lambda p: p.name)
def test_prefetch_on_real_videos(path: Path) -> None:
    plain = frames_of(path, 0, fps=5)
    assert frames_of(path, 2, fps=5) == plain
    assert len(plain[0]) > 0


def test_max_frames_stops_the_decoder(indexed_video: Path) -> None:
    frames, decoded, _ = frames_of(indexed_video, 2, every=1, max_frames=5)
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4] and decoded == 5
    assert not decode_threads()


@pytest.mark.parametrize("how", ["break", "raise"])
def test_consumer_stopping_early_stops_the_thread(indexed_video: Path, how: str) -> None:
    sampler = FrameSampler(indexed_video, "video", SamplingPlan(every=1), prefetch=2)
    seen = []

    def consume() -> None:
        for frame in sampler:
            seen.append(frame.index)
            if len(seen) == 3:
                if how == "raise":
                    raise RuntimeError("detector failed")
                break

    if how == "raise":
        with pytest.raises(RuntimeError, match="detector failed"):
            consume()
    else:
        consume()
    assert seen == [0, 1, 2]
    assert not decode_threads(), "the decoding thread must be joined when the consumer stops"
    assert sampler.frames_decoded <= 3 + 2 + 1  # at most `prefetch` frames (plus one in hand) decoded ahead


def fake_frames(produced: list[int], fail_at: int | None = None) -> Iterator[Frame]:
    for i in range(10):
        if i == fail_at:
            raise OSError("disk went away")
        produced.append(i)
        yield Frame(i, i / 10, np.zeros((2, 2, 3), np.uint8))


def test_producer_errors_reach_the_consumer_in_order() -> None:
    got: list[int] = []
    with pytest.raises(OSError, match="disk went away"):
        for frame in prefetched(fake_frames([], fail_at=4), depth=2):
            got.append(frame.index)
    assert got == [0, 1, 2, 3]
    assert not decode_threads()


def test_the_producer_stays_at_most_depth_ahead() -> None:
    produced: list[int] = []
    frames = prefetched(fake_frames(produced), depth=2)
    assert next(frames).index == 0
    time.sleep(0.3)  # give the producer every chance to run ahead
    assert len(produced) <= 1 + 2 + 1  # the one consumed, the queue, and one waiting to be put
    assert [f.index for f in frames] == list(range(1, 10))


@pytest.mark.parametrize("threads", ["1", "2", "0", "not a number"])
def test_decoder_threads_change_nothing_but_speed(
    indexed_video: Path, vfr_video, monkeypatch, threads
) -> None:
    for path in (indexed_video, vfr_video[0]):
        monkeypatch.delenv(DECODER_THREADS_ENV, raising=False)
        default = frames_of(path, 2, fps=5)
        monkeypatch.setenv(DECODER_THREADS_ENV, threads)
        assert frames_of(path, 2, fps=5) == default
