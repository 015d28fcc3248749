"""`emotion-batch models fetch`: verified, atomic installs, tested against a loopback HTTP server (no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from emotion_batch.vision.fetch import YUNET_FILENAME, FetchError, cached_yunet_path, fetch_yunet

from .environment import run_cli

PAYLOAD = bytes(range(256)) * 1000
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests_seen.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server for a temporary folder: (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    _QuietHandler.requests_seen = []
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("EMOTION_BATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "cache"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part")) if folder.exists() else []


def test_download_is_verified_and_installed(server, private_cache: Path) -> None:
    url, root = server
    (root / "good.onnx").write_bytes(PAYLOAD)
    path = fetch_yunet(url=f"{url}/good.onnx", expected_sha256=PAYLOAD_SHA256)
    assert path == cached_yunet_path() == private_cache / YUNET_FILENAME
    assert path.read_bytes() == PAYLOAD
    assert leftovers(private_cache) == []


def test_corrupt_download_is_refused_and_leaves_nothing(server, private_cache: Path) -> None:
    url, root = server
    (root / "bad.onnx").write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(FetchError, match=f"sha256 mismatch: expected {PAYLOAD_SHA256}"):
        fetch_yunet(url=f"{url}/bad.onnx", expected_sha256=PAYLOAD_SHA256)
    assert not cached_yunet_path().exists()
    assert leftovers(private_cache) == []


def test_corrupt_download_does_not_replace_a_good_copy(server) -> None:
    url, root = server
    (root / "good.onnx").write_bytes(PAYLOAD)
    (root / "bad.onnx").write_bytes(b"tampered")
    fetch_yunet(url=f"{url}/good.onnx", expected_sha256=PAYLOAD_SHA256)
    with pytest.raises(FetchError):
        fetch_yunet(url=f"{url}/bad.onnx", expected_sha256=PAYLOAD_SHA256, force=True)
    assert cached_yunet_path().read_bytes() == PAYLOAD


def test_verified_copy_is_not_downloaded_again(server) -> None:
    url, root = server
    (root / "good.onnx").write_bytes(PAYLOAD)
    fetch_yunet(url=f"{url}/good.onnx", expected_sha256=PAYLOAD_SHA256)
    fetch_yunet(url=f"{url}/good.onnx", expected_sha256=PAYLOAD_SHA256)
    assert _QuietHandler.requests_seen == ["/good.onnx"]


def test_http_error_is_reported(server) -> None:
    url, _ = server
    with pytest.raises(FetchError, match="could not read .*missing.onnx.*404"):
        fetch_yunet(url=f"{url}/missing.onnx", expected_sha256=PAYLOAD_SHA256)


def test_install_from_local_file(tmp_path: Path) -> None:
    local = tmp_path / "copy.onnx"
    local.write_bytes(PAYLOAD)
    assert fetch_yunet(from_file=local, expected_sha256=PAYLOAD_SHA256).read_bytes() == PAYLOAD


def test_cli_fetch_real_yunet_from_loopback_then_corrupt(
    server, yunet_path: Path, private_cache: Path
) -> None:
    url, root = server
    (root / YUNET_FILENAME).write_bytes(yunet_path.read_bytes())
    (root / "corrupt.onnx").write_bytes(yunet_path.read_bytes()[:-10])
    env = {"EMOTION_BATCH_CACHE_DIR": str(private_cache), "NO_PROXY": "127.0.0.1,localhost"}

    ok = run_cli("models", "fetch", "--url", f"{url}/{YUNET_FILENAME}", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "sha256 8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4 verified" in ok.stdout
    assert (private_cache / YUNET_FILENAME).read_bytes() == yunet_path.read_bytes()

    bad = run_cli("models", "fetch", "--force", "--url", f"{url}/corrupt.onnx", env=env)
    assert bad.returncode == 1
    assert "sha256 mismatch" in bad.stderr
    assert (private_cache / YUNET_FILENAME).read_bytes() == yunet_path.read_bytes()


def test_cli_fetch_from_local_copy(yunet_path: Path, private_cache: Path) -> None:
    env = {"EMOTION_BATCH_CACHE_DIR": str(private_cache), "EMOTION_BATCH_DETECTOR_MODEL": ""}
    result = run_cli("models", "fetch", "--from", yunet_path, env=env)
    assert result.returncode == 0, result.stderr
    info = run_cli("models", "info", env=env)
    assert f"detector: yunet {private_cache / YUNET_FILENAME}" in info.stdout
