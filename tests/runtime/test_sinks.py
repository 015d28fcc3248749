"""Output files: exact CSV layout, Parquet by extension, and atomic replacement."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from emotion_batch.output.sinks import OutputError, open_sink
from emotion_batch.schema import ROW_COLUMNS, rows_frame

PROBS = (0.1, 0.05, 0.05, 0.6123456789012345, 0.1, 0.05, 0.0376543210987655)
ROWS = [
    ("a.mp4", 0, 0.0, 0, 0, *([None] * 16)),
    ("a.mp4", 13, 0.52, 0, 2, 0, 0, 10, 20, 30, 40, 0.91, *PROBS, "happy", PROBS[3]),
    ("a.mp4", 13, 0.52, 0, 2, 1, 3, 110, 20, 32, 41, 0.77, *PROBS, "happy", PROBS[3]),
]


def test_csv_layout(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    with open_sink(out, rows_frame([])) as sink:
        sink.write(rows_frame(ROWS[:1]))
        sink.write(rows_frame(ROWS[1:]))
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(ROW_COLUMNS)
    assert lines[1] == "a.mp4,0,0.0,0,0" + "," * 16
    assert lines[2].startswith("a.mp4,13,0.52,0,2,0,0,10,20,30,40,0.91,0.1,0.05,0.05,0.6123456789012345,")
    back = pd.read_csv(out)
    assert back["happy"].iloc[1] == PROBS[3]  # full precision, not rounded
    assert sink.rows_written == 3


def test_empty_run_still_writes_the_header(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    with open_sink(out, rows_frame([])):
        pass
    assert out.read_text() == ",".join(ROW_COLUMNS) + "\n"


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("previous results\n")
    with pytest.raises(RuntimeError), open_sink(out, rows_frame([])) as sink:
        sink.write(rows_frame(ROWS))
        raise RuntimeError("killed mid-run")
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_parquet_by_extension_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "r.parquet"
    with open_sink(out, rows_frame([])) as sink:
        sink.write(rows_frame(ROWS[:1]))
        sink.write(rows_frame(ROWS[1:]))
    back = pd.read_parquet(out)
    assert list(back.columns) == list(ROW_COLUMNS)
    pd.testing.assert_frame_equal(back, rows_frame(ROWS), check_dtype=False)
    assert str(back["track_id"].dtype) == "Int64"


def test_missing_output_folder_is_reported_before_any_work(tmp_path: Path) -> None:
    with (
        pytest.raises(OutputError, match="output folder does not exist"),
        open_sink(tmp_path / "nope" / "r.csv", rows_frame([])),
    ):
        pytest.fail("the block must not run")
