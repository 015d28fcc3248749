"""Every bad-data error names the path and the cause, before any training starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from emotion_train.cli import main
from emotion_train.data import DatasetError, load_folder, stratified_split

from .conftest import make_dataset


def _layout(root: Path, kind: str) -> tuple[Path, list[str]]:
    """A broken training folder of the given kind, and the words the error must contain."""
    if kind == "empty folder":
        root.mkdir()
        return root, [str(root), "0 class folder(s)", "at least 2"]
    if kind == "one class":
        make_dataset(root, 3, seed=0, classes=("ring",))
        return root, [str(root), "1 class folder(s)", "ring"]
    if kind == "empty class folder":
        make_dataset(root, 3, seed=0, classes=("bars_h", "ring"))
        (root / "bars_v").mkdir()
        return root, [str(root / "bars_v"), "no images"]
    if kind == "no decodable images":
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            (root / name / "x.png").write_bytes(b"")
        return root, [str(root), "could be decoded"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty folder", "one class", "empty class folder", "no decodable images"])
def test_bad_training_folder(tmp_path, kind):
    root, words = _layout(tmp_path / "data", kind)
    result = CliRunner().invoke(main, [str(root), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    for word in words:
        assert word in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_folder_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "nope" in result.output and "does not exist" in result.output


@pytest.mark.parametrize("split", ["--val", "--test"])
def test_class_sets_must_match(tmp_path, split):
    train = make_dataset(tmp_path / "train", 3, seed=0)
    other = make_dataset(tmp_path / "other", 3, seed=1)
    shutil.rmtree(other / "ring")
    (other / "stripes").mkdir()
    make_dataset(other, 3, seed=2, classes=("stripes",))
    result = CliRunner().invoke(main, [str(train), "--out", str(tmp_path / "run"), split, str(other)])
    assert result.exit_code == 1
    assert str(other) in result.output and "differ from the training classes" in result.output


def test_unreadable_and_undecodable_images_are_skipped_and_counted(tmp_path):
    root = make_dataset(tmp_path / "data", 4, seed=0)
    (root / "ring" / "text.png").write_text("not an image")
    (root / "bars_h" / "empty.jpg").write_bytes(b"")
    ds = load_folder(root, 40, cache_dir=tmp_path / "cache")
    assert len(ds) == 12
    assert sorted(rel for rel, _ in ds.skipped) == ["bars_h/empty.jpg", "ring/text.png"]
    cached = load_folder(root, 40, cache_dir=tmp_path / "cache")  # second load comes from the cache
    assert cached.skipped == ds.skipped and (cached.images == ds.images).all()


def test_stratified_split_is_seeded_and_per_class(tmp_path):
    ds = load_folder(make_dataset(tmp_path / "data", 20, seed=0), 40, cache_dir=tmp_path / "cache")
    train_a, val_a = stratified_split(ds, 0.25, seed=7)
    _, val_b = stratified_split(ds, 0.25, seed=7)
    _, val_c = stratified_split(ds, 0.25, seed=8)
    assert val_a.files == val_b.files and val_a.files != val_c.files
    assert val_a.class_counts() == {"bars_h": 5, "bars_v": 5, "ring": 5}
    assert not set(val_a.files) & set(train_a.files)


def test_split_needs_two_images_per_class(tmp_path):
    root = make_dataset(tmp_path / "data", 5, seed=0)
    for extra in sorted((root / "ring").iterdir())[1:]:
        extra.unlink()
    ds = load_folder(root, 40, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="ring"):
        stratified_split(ds, 0.2, seed=0)
