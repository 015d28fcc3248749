"""The run report, built from a REAL run of the command on shared videos and photos, looked at in real Chromium.

Needs the shared media and YuNet ($EMOTION_BATCH_SHARED) and, for the browser checks, Chromium; each skips with
its reason when absent. $EMOTION_BATCH_REPORT_SHOT, when set, names where to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from emotion_batch import __version__
from emotion_batch.output import report as rp
from emotion_batch.output import subtitles as st
from emotion_batch.output.timeline import dominant_emotion

from . import browser, cli_runs
from .environment import shared_path

VIDEOS = ("facenetpytorch_video.mp4", "pyfeat_single_face.mp4")
PHOTOS = ("deepface_couple.jpg", "fer_no-faces_NEGATIVE.jpg")
#: A file name with every character HTML cares about; its content is not a video, so it is an error row too.
ODD_NAME = """<b>bad & "odd" 'name'.mp4"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str], model_args: list[str]):
    """The command run on two shared videos, two photos and a broken file; then every output of issue #17."""
    root = tmp_path_factory.mktemp("report_media")
    (root / "clips").mkdir()
    (root / "photos").mkdir()
    for name in VIDEOS:
        shutil.copy(shared_path("media", "videos", name), root / "clips" / name)
    for name in PHOTOS:
        shutil.copy(shared_path("media", "photos", name), root / "photos" / name)
    (root / "clips" / ODD_NAME).write_text("<script>alert(1)</script> not a video\n")
    out = tmp_path_factory.mktemp("report_out") / "results.csv"
    done = cli_runs.run(root, "--out", out, *model_args, env=cli_env, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a file failed (the broken one), by design
    summary = pd.read_csv(out.with_name("results_summary.csv"))
    metadata = {
        "date": "2026-12-01T10:00:00Z",
        "inputs": [str(root)],
        "output": str(out),
        "model": {"name": summary["model"].iloc[0], "sha256": summary["model_sha256"].iloc[0]},
        "detector": {"name": summary["detector"].iloc[0], "sha256": summary["detector_sha256"].iloc[0]},
        "settings": {"fps": "default", "bin_s": 60},
        "versions": {"emotion-batch": __version__, "pandas": pd.__version__},
    }
    started = time.perf_counter()
    outputs = rp.build_run_outputs(out, metadata=metadata)
    elapsed = time.perf_counter() - started
    return out, summary, outputs, metadata, elapsed


def test_tables_agree_with_the_summary(real_run) -> None:
    out, summary, outputs, _, _ = real_run
    tracks = pd.read_csv(outputs.tracks_csv)
    timeline = pd.read_csv(outputs.timeline_csv)
    ok = summary[(summary["status"] == "ok") & (summary["faces"] > 0)]
    assert len(ok) == 3  # both videos and the couple photo
    rows = pd.read_csv(out)
    for _, f in ok.iterrows():
        faces = rows[(rows["source"] == f["source"]) & (rows["n_faces"] > 0)]
        assert len(faces) == f["faces"]  # every face, those seen in one sample (no track id) too
        assert (tracks["source"] == f["source"]).sum() == f["tracks"] == faces["track_id"].nunique()
        assert (
            timeline.loc[timeline["source"] == f["source"], "samples"].sum()
            == faces["track_id"].notna().sum()
        )
        # One rule for "dominant": the summary's dominant_emotion is dominant_emotion() of its means.
        assert dominant_emotion(f.to_dict()) == f["dominant_emotion"]
    for table in (tracks, timeline):
        assert all(dominant_emotion(r) == r["dominant_emotion"] for r in table.to_dict("records"))
    assert "photos/fer_no-faces_NEGATIVE.jpg" not in set(tracks["source"])


def test_each_video_has_subtitles_and_each_track_a_thumbnail(real_run) -> None:
    _, summary, outputs, _, _ = real_run
    tracks = pd.read_csv(outputs.tracks_csv)
    for name in VIDEOS:
        source = f"clips/{name}"
        cue_list = st.parse_webvtt(outputs.subtitles[source].read_text(encoding="utf-8"))
        assert cue_list and all(c.start_s < c.end_s for c in cue_list)
        assert all(a.end_s <= b.start_s for a, b in zip(cue_list, cue_list[1:]))
        thumbs = outputs.thumbnails[source]
        assert len(thumbs) == (tracks["source"] == source).sum()
        for path in thumbs.values():
            image = cv2.imread(str(path))
            assert image is not None and image.shape == (128, 128, 3) and image.std() > 5


def test_report_is_self_contained_and_escaped(real_run) -> None:
    _, _, outputs, metadata, elapsed = real_run
    text = outputs.report.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I), "no network reference"
    assert re.findall(r'<img[^>]+src="([^"]{0,5})', text) and all(
        s == "data:" for s in re.findall(r'<img[^>]+src="([^"]{0,5})', text)
    )
    assert ODD_NAME not in text and "&lt;b&gt;bad &amp; &quot;odd&quot; &#x27;name&#x27;.mp4" in text
    assert metadata["model"]["sha256"] in text and metadata["detector"]["sha256"] in text
    for section in rp.SECTIONS:
        assert f'<section id="{section}">' in text
    print(f"report built in {elapsed:.2f} s, {outputs.report.stat().st_size / 1e6:.2f} MB")


def test_report_rendering_is_pure(real_run) -> None:
    out, summary, outputs, metadata, _ = real_run
    kwargs = dict(
        summary=summary,
        metadata=metadata,
        tracks=pd.read_csv(outputs.tracks_csv),
        timeline=pd.read_csv(outputs.timeline_csv),
        thumbnails=outputs.thumbnails,
    )
    assert rp.render_report(**kwargs) == rp.render_report(**kwargs)


@pytest.mark.slow  # a browser start: 14-28 s on 2 cores
def test_report_in_chromium(real_run, tmp_path: Path) -> None:
    browser.chromium()
    _, summary, outputs, _, _ = real_run
    png = browser.screenshot(outputs.report, tmp_path / "report.png", tmp_path / "profile")
    keep = os.environ.get("EMOTION_BATCH_REPORT_SHOT")
    if keep:
        shutil.copy(png, keep)
    image = cv2.imread(str(png))
    assert image.shape[:2] == (2000, 1280)
    assert image.std() > 20 and (image < 200).mean() > 0.02, "the screenshot is blank"

    page = browser.check_page(outputs.report, tmp_path / "profile")
    assert page.console == [], "console messages:\n" + "\n".join(page.console)
    assert [s for s in page.sections if not s.startswith("video-")] == list(rp.SECTIONS)
    assert sum(1 for s in page.sections if s.startswith("video-")) == len(VIDEOS)
    broken = [i for i in page.images if not i["complete"] or i["width"] <= 0]
    assert not broken, f"broken images: {broken}"
    # the overview, one timeline per video, a thumbnail per track
    n_tracks = int(summary.loc[summary["status"] == "ok", "tracks"].fillna(0).sum())
    assert len(page.images) >= 1 + len(VIDEOS) + n_tracks
    assert ODD_NAME in page.dom.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">") and (
        "<b>bad" not in page.dom
    )


def test_the_browser_check_sees_broken_images_and_console_errors(tmp_path: Path) -> None:
    """The checks above would pass on a page that loads nothing: make sure they do fail when they should."""
    browser.chromium()
    page = tmp_path / "bad.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{rp.CSP}"></head>'
        '<body><section id="run"></section><img alt="broken" src="data:image/png;base64,AAAA">'
        '<img alt="remote" src="https://example.invalid/x.png"></body></html>'
    )
    check = browser.check_page(page, tmp_path / "profile")
    assert [i["width"] for i in check.images] == [0, 0]
    assert any("Refused to load" in line or "Content Security Policy" in line for line in check.console)
    assert check.sections == ["run"]
    assert np.isfinite(check.body_text)


def test_sections_are_capped_for_big_runs(real_run) -> None:
    _, summary, outputs, metadata, _ = real_run
    text = rp.render_report(summary=summary, metadata=metadata, max_sections=1)
    assert text.count('<section class="video"') == 1
    assert "1 more videos not shown here" in text and "clips/pyfeat_single_face.mp4" in text


def test_the_files_table_lists_every_error_and_counts_what_it_leaves_out(real_run) -> None:
    _, summary, _, metadata, _ = real_run
    ok = summary[summary["status"] == "ok"]
    many = pd.concat(
        [summary, *(ok.assign(source=ok["source"] + f".copy{i}") for i in range(3))], ignore_index=True
    )
    text = rp.render_report(summary=many, metadata=metadata, max_table_files=len(ok))
    files = text.split('<section id="files">', 1)[1].split("</section>", 1)[0]
    assert f"{3 * len(ok):,} more analysed files are not listed here" in files
    assert ".copy0" not in files
    for source in summary.loc[summary["status"] != "ok", "source"]:
        assert rp._e(source) in files  # every failed or skipped file is listed
    assert "more analysed files" not in rp.render_report(summary=summary, metadata=metadata)
