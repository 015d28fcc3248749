"""Input discovery: deterministic order, names relative to the input root, filters, and the run's own outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotion_batch.media.sources import discover, media_type_for


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    touch(
        tmp_path,
        "b/clip.MP4",
        "a/z.jpg",
        "a/sub/photo.webp",
        "a/notes.txt",
        "top.mov",
        ".hidden.jpg",
        ".cache/x.jpg",
        "a/README",
    )
    return tmp_path


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.jpg", "image"), ("a.JPEG", "image"), ("a.tiff", "image"), ("a.webp", "image"), ("a.bmp", "image"),
     ("a.mp4", "video"), ("a.MOV", "video"), ("a.mkv", "video"), ("a.webm", "video"), ("a.m4v", "video"),
     ("a.mpg", "video"), ("a.avi", "video"), ("a.txt", None), ("a", None), ("a.jpg.part", None)],
)  # fmt: skip
def test_media_type_by_extension(name: str, kind: str | None) -> None:
    assert media_type_for(Path(name)) == kind


def test_folder_walk_is_sorted_relative_and_skips_hidden(tree: Path) -> None:
    found = discover([tree])
    assert [s.source for s in found] == [
        "a/README",
        "a/notes.txt",
        "a/sub/photo.webp",
        "a/z.jpg",
        "b/clip.MP4",
        "top.mov",
    ]
    assert [s.media_type for s in found] == [None, None, "image", "image", "video", "video"]
    assert found[0].skip_reason == "not a media file extension (no extension)"
    assert found[1].skip_reason == "not a media file extension (.txt)"
    assert all(s.path.is_absolute() for s in found)


def test_same_result_whatever_the_argument_order(tree: Path) -> None:
    one = discover([tree / "b", tree / "a"])
    two = discover([tree / "a", tree / "b"])
    assert one == two
    assert [s.source for s in one] == ["README", "clip.MP4", "notes.txt", "sub/photo.webp", "z.jpg"]


def test_a_file_argument_is_named_by_its_file_name(tree: Path) -> None:
    (found,) = discover([tree / "a" / "sub" / "photo.webp"])
    assert found.source == "photo.webp"


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["*.jpg"], [], ["a/z.jpg"]),
        (["a/*"], [], ["a/README", "a/notes.txt", "a/sub/photo.webp", "a/z.jpg"]),
        (["*.jpg", "*.webp"], ["*/sub/*"], ["a/z.jpg"]),
        ([], ["*.txt", "README", "b/*"], ["a/sub/photo.webp", "a/z.jpg", "top.mov"]),
        (["*.MP4"], [], ["b/clip.MP4"]),
    ],
)
def test_include_and_exclude_globs(tree: Path, include, exclude, expected) -> None:
    assert [s.source for s in discover([tree], include=include, exclude=exclude)] == expected


def test_outputs_inside_the_input_are_never_ingested(tree: Path) -> None:
    touch(tree, "results_charts/overview.png", "results.csv", "ann/top.mov/frame_000000.jpg")
    found = discover([tree], ignore=[tree / "results_charts", tree / "results.csv", tree / "ann"])
    assert not any(s.source.startswith(("results", "ann")) for s in found)


def test_a_file_reached_twice_is_listed_once(tree: Path) -> None:
    (tree / "b" / "alias.jpg").symlink_to(tree / "a" / "z.jpg")
    found = discover([tree, tree / "a"])
    assert sum(s.path.name == "z.jpg" for s in found) == 1
    assert "b/alias.jpg" not in {s.source for s in found}  # the same file as a/z.jpg, walked first


def test_same_relative_name_under_two_roots_is_qualified(tmp_path: Path) -> None:
    touch(tmp_path, "day1/cam.mp4", "day2/cam.mp4")
    assert [s.source for s in discover([tmp_path / "day1", tmp_path / "day2"])] == ["cam.mp4", "day2/cam.mp4"]


def test_directory_symlink_loop_terminates(tmp_path: Path) -> None:
    touch(tmp_path, "a/x.jpg")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    assert [s.source for s in discover([tmp_path])] == ["a/x.jpg"]


def test_missing_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="input path does not exist"):
        discover([tmp_path / "nope"])
