"""A newcomer's first run (#15): with no detector installed, the main command downloads YuNet itself.

Everything runs the real `emotion-batch` command in a subprocess against a loopback HTTP server (no internet):
`$EMOTION_BATCH_DETECTOR_URL` points it there and the cache is an empty temporary folder, so the download, its
sha256 check, the atomic install into the cache and the offline message are the real code paths.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest

from emotion_batch.vision.detection import DetectorUnavailable, download_if_missing, resolve_detector
from emotion_batch.vision.fetch import YUNET_FILENAME, YUNET_SHA256

from .environment import run_cli, shared_path


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves `files` (URL path -> bytes) and records the paths asked for."""

    files: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def shared_yunet() -> bytes:
    """The shared YuNet copy (skips with the reason when the shared folder is absent)."""
    data = shared_path("detectors", YUNET_FILENAME).read_bytes()
    assert hashlib.sha256(data).hexdigest() == YUNET_SHA256
    return data


@pytest.fixture
def server(shared_yunet: bytes) -> Iterator[str]:
    """A loopback server with the real file at /yunet.onnx and a wrong one (same size) at /wrong.onnx."""
    _Files.files = {"/yunet.onnx": shared_yunet, "/wrong.onnx": bytes(len(shared_yunet))}
    _Files.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def first_run_env(tmp_path: Path) -> dict[str, str]:
    """A fresh machine: no detector named anywhere, an empty cache, no proxy for loopback."""
    return {
        "EMOTION_BATCH_DETECTOR_MODEL": "",
        "EMOTION_BATCH_CACHE_DIR": str(tmp_path / "cache"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{YUNET_FILENAME}"  # nothing listens there any more: connection refused


def cache_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("cache", ["EMOTION_BATCH_CACHE_DIR", "XDG_CACHE_HOME"])
def test_first_run_downloads_the_detector_and_goes_on(
    server: str,
    first_run_env,
    tmp_path: Path,
    astronaut_jpg: Path,
    model_args,
    shared_yunet: bytes,
    cache: str,
) -> None:
    env = {**first_run_env, "EMOTION_BATCH_DETECTOR_URL": f"{server}/yunet.onnx"}
    if cache == "XDG_CACHE_HOME":  # the default location (platformdirs), as on a user's machine
        env.update(EMOTION_BATCH_CACHE_DIR="", XDG_CACHE_HOME=str(tmp_path / "xdg"))
        installed = tmp_path / "xdg" / "emotion-batch" / YUNET_FILENAME
    else:
        installed = tmp_path / "cache" / YUNET_FILENAME
    out = tmp_path / "r.csv"
    result = run_cli(astronaut_jpg, "--out", out, *model_args, env=env)
    assert result.returncode == 0, result.stderr
    assert _Files.seen == ["/yunet.onnx"]
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == YUNET_SHA256
    assert cache_entries(installed.parent) == [YUNET_FILENAME]  # no temporary file left beside it
    # Not a terminal: one log line says what was downloaded from where, then the run goes on.
    lines = [line for line in result.stderr.splitlines() if "downloading YuNet" in line]
    assert len(lines) == 1 and f"{server}/yunet.onnx" in lines[0], result.stderr
    rows = pd.read_csv(out)
    assert (rows["n_faces"] == 1).all() and len(rows) == 1
    summary = pd.read_csv(tmp_path / "r_summary.csv")
    assert summary["detector_sha256"].tolist() == [YUNET_SHA256]


def test_wrong_bytes_are_refused_and_nothing_is_cached(
    server: str, first_run_env, tmp_path: Path, astronaut_jpg: Path, model_args
) -> None:
    env = {**first_run_env, "EMOTION_BATCH_DETECTOR_URL": f"{server}/wrong.onnx"}
    result = run_cli(astronaut_jpg, "--out", tmp_path / "r.csv", *model_args, env=env)
    assert result.returncode == 2, result.stderr
    assert "sha256 mismatch" in result.stderr and f"expected {YUNET_SHA256}" in result.stderr
    assert "Traceback" not in result.stderr
    assert cache_entries(tmp_path / "cache") == []  # neither the file nor a temporary copy
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.state").exists()


def test_offline_the_error_is_one_line_saying_what_to_do(
    first_run_env, tmp_path: Path, astronaut_jpg: Path, model_args
) -> None:
    url = closed_port_url()
    env = {**first_run_env, "EMOTION_BATCH_DETECTOR_URL": url}
    result = run_cli(astronaut_jpg, "--out", tmp_path / "r.csv", *model_args, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot download the YuNet face detector" in line]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert url in line and YUNET_SHA256 in line and "emotion-batch models fetch --from FILE" in line
    assert "shared" not in line  # ../shared exists only in the development layout
    assert cache_entries(tmp_path / "cache") == []
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.state").exists()


def test_named_detector_file_is_never_replaced_by_a_download(
    server: str, first_run_env, tmp_path: Path, astronaut_jpg: Path, model_args
) -> None:
    missing = tmp_path / "none.onnx"
    env = {**first_run_env, "EMOTION_BATCH_DETECTOR_URL": f"{server}/yunet.onnx"}
    result = run_cli(
        astronaut_jpg, "--out", tmp_path / "r.csv", "--detector-model", missing, *model_args, env=env
    )
    assert result.returncode == 2
    assert f"YuNet model file not found: {missing}" in result.stderr
    assert _Files.seen == [] and cache_entries(tmp_path / "cache") == []


def test_only_the_main_command_downloads(server: str, first_run_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library (`analyze()`, `models info`) never uses the network; inside `download_if_missing` it does."""
    for name, value in {**first_run_env, "EMOTION_BATCH_DETECTOR_URL": f"{server}/yunet.onnx"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DetectorUnavailable, match="emotion-batch models fetch"):
        resolve_detector("yunet")
    assert _Files.seen == []
    info = run_cli(
        "models", "info", env={**first_run_env, "EMOTION_BATCH_DETECTOR_URL": f"{server}/yunet.onnx"}
    )
    assert "detector: unavailable" in info.stdout and _Files.seen == []
    with download_if_missing():
        spec = resolve_detector("yunet")
    assert (spec.kind, spec.sha256, _Files.seen) == ("yunet", YUNET_SHA256, ["/yunet.onnx"])
