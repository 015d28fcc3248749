"""The optional preview page (`--preview 127.0.0.1:8765`), served on loopback only.

`/` is a small page showing the latest annotated frame (`/frame.jpg`, refreshed a few times a second) and the
table of people (`/people.json`, the same state as the terminal view). Frames are JPEG-encoded on request only,
once per sample, so the page costs nothing when nobody watches it.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2

from ..vision import annotate
from .capture import Sample
from .view import People

log = logging.getLogger(__name__)


class PreviewError(Exception):
    """The preview address is not acceptable (not loopback) or cannot be bound."""


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT on a loopback address (127.0.0.0/8, ::1 or localhost); anything else is refused."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise PreviewError(f"--preview wants HOST:PORT, e.g. 127.0.0.1:8765 (got {address!r})")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PreviewError(
            f"--preview serves on loopback only (127.0.0.1, ::1 or localhost), not {host!r}: the page shows "
            "faces from the camera; reach it from elsewhere through an SSH tunnel"
        )
    return host, int(port_text)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>emotion-batch live: {source}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #111; color: #eee; }}
img {{ max-width: 100%; border: 1px solid #444; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ padding: 0.2em 0.8em; border-bottom: 1px solid #333; text-align: left; }}
.spark {{ font-family: monospace; color: #6cf; }}
</style></head>
<body>
<h1>emotion-batch live</h1>
<p id="status">{source}</p>
<img id="frame" alt="latest annotated frame" src="frame.jpg">
<table id="people"><thead><tr><th>person</th><th>emotion</th><th>confidence</th><th>trend</th></tr></thead>
<tbody></tbody></table>
<script>
const img = document.getElementById("frame");
const body = document.querySelector("#people tbody");
img.addEventListener("load", () => {{ document.body.dataset.imageWidth = img.naturalWidth; }});
function cell(tr, text, cls) {{
  const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td);
}}
async function refresh() {{
  try {{
    const r = await fetch("people.json", {{cache: "no-store"}});
    const state = await r.json();
    body.replaceChildren(...state.people.map(p => {{
      const tr = document.createElement("tr");
      cell(tr, "#" + p.track_id); cell(tr, p.emotion);
      cell(tr, p.confidence.toFixed(2)); cell(tr, p.sparkline, "spark");
      return tr;
    }}));
    document.getElementById("status").textContent =
      state.source + " - " + state.samples + " samples, " + state.faces + " face(s) in the latest frame";
    document.body.dataset.samples = state.samples;
  }} catch (e) {{}}
  img.src = "frame.jpg?t=" + Date.now();
}}
refresh(); setInterval(refresh, 400);
</script>
</body></html>
"""


class Preview:
    """Observer of samples and the HTTP server of the page; `start()` binds, `close()` stops."""

    def __init__(self, address: str, people: People, source: str) -> None:
        self.host, self.port = parse_address(address)
        self.people, self.source = people, source
        self._lock = threading.Lock()
        self._sample: Sample | None = None
        self._jpeg: tuple[int, bytes] | None = None  # (sample number, encoded frame)
        self._count = 0
        self._server: ThreadingHTTPServer | None = None

    def __call__(self, sample: Sample) -> None:
        with self._lock:
            self._sample, self._count = sample, self._count + 1

    def jpeg(self) -> bytes | None:
        with self._lock:
            sample, count = self._sample, self._count
            if sample is None:
                return None
            if self._jpeg is not None and self._jpeg[0] == count:
                return self._jpeg[1]
        image = annotate.draw(sample.image, sample.faces, sample.ids, sample.probs)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        data = encoded.tobytes() if ok else b""
        with self._lock:
            self._jpeg = (count, data)
        return data

    def state(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.people.samples,
            "faces": self.people.last_faces,
            "people": self.people.snapshot(),
        }

    def start(self) -> str:
        preview = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(PAGE.format(source=html.escape(preview.source)).encode(), "text/html")
                elif path == "/people.json":
                    self._send(json.dumps(preview.state()).encode(), "application/json")
                elif path == "/frame.jpg":
                    data = preview.jpeg()
                    if data:
                        self._send(data, "image/jpeg")
                    else:
                        self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame analysed yet")
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)

            def _send(self, data: bytes, kind: str) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                log.debug("preview: " + format, *args)

        server_class = type(
            "PreviewServer",
            (ThreadingHTTPServer,),
            {
                "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                "daemon_threads": True,
            },
        )
        try:
            self._server = server_class((self.host, self.port), Handler)
        except OSError as exc:
            raise PreviewError(f"cannot serve the preview on {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="live-preview", daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
