"""Looking at an HTML file in real headless Chromium: a screenshot, and what the loaded page says about itself.

`chromium()` finds the browser ($EMOTION_BATCH_CHROMIUM, else `chromium` / `chromium-browser` / `google-chrome`
on PATH) and skips the test with the reason when there is none (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM_ENV = "EMOTION_BATCH_CHROMIUM"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_NONCE = "report-check"

# Runs on load (DOM and every image done): records each image's decoded size and the sections found, into the
# DOM, where --dump-dom shows it.
_PROBE = """
<script nonce="NONCE">
window.addEventListener("load", () => {
  const out = {
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
    sections: [...document.querySelectorAll("section[id]")].map(s => s.id),
    title: document.title,
    bodyText: document.body.innerText.length,
  };
  const pre = document.createElement("pre");
  pre.id = "__report_check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
""".replace("NONCE", _NONCE)


def chromium() -> str:
    env = os.environ.get(CHROMIUM_ENV)
    if env:
        found = shutil.which(env)
        if not found:
            pytest.skip(f"${CHROMIUM_ENV}={env} is not an executable; the browser test needs Chromium")
        return found
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        f"no Chromium found (set ${CHROMIUM_ENV} or `apt-get install chromium`); the browser test needs it"
    )


def _base_args(exe: str, profile: Path) -> list[str]:
    args = [exe, "--headless", "--disable-gpu", f"--user-data-dir={profile}", "--no-first-run"]
    args += ["--disable-extensions", "--disable-background-networking", "--hide-scrollbars"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nice", "-n", "10", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def screenshot(page: Path, png: Path, profile: Path, width: int = 1280, height: int = 2000) -> Path:
    """A PNG of the page's first `height` pixels at `width` px wide."""
    result = _run(
        [
            *_base_args(chromium(), profile),
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            page.as_uri(),
        ]
    )
    assert png.is_file(), f"chromium wrote no screenshot (rc {result.returncode}):\n{result.stderr[-3000:]}"
    return png


@dataclass
class PageCheck:
    images: list[dict]
    sections: list[str]
    title: str
    body_text: int
    console: list[str]
    dom: str


def with_probe(html_text: str) -> str:
    """The page plus the probe script, its CSP widened by exactly that script's nonce (nothing else)."""

    def widen(match: re.Match) -> str:
        return match.group(0).replace(
            "default-src 'none'", f"default-src 'none'; script-src 'nonce-{_NONCE}'"
        )

    text, n = re.subn(
        r'<meta http-equiv="Content-Security-Policy" content="[^"]*">', widen, html_text, count=1
    )
    return text.replace("</body>", _PROBE + "</body>", 1)


def check_page(page: Path, profile: Path) -> PageCheck:
    """Load a copy of the page with the probe in Chromium; what the probe recorded, and every console line."""
    probed = page.with_name(f"{page.stem}.probed.html")
    probed.write_text(with_probe(page.read_text(encoding="utf-8")), encoding="utf-8")
    result = _run(
        [
            *_base_args(chromium(), profile),
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--run-all-compositor-stages-before-draw",
            "--dump-dom",
            probed.as_uri(),
        ]
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    match = re.search(r'<pre id="__report_check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the probe did not run (rc {result.returncode}):\n{result.stderr[-3000:]}"
    import html

    data = json.loads(html.unescape(match.group(1)))
    return PageCheck(
        data["images"], data["sections"], data["title"], data["bodyText"], console, result.stdout
    )
