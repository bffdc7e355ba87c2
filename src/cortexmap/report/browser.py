"""Headless Chromium for the report: screenshots and the rendered DOM (used by the browser test).

Chromium runs as a one-shot command (``--dump-dom`` or ``--screenshot``) with a throwaway profile,
no background networking, and every host name resolving to nothing
(``--host-resolver-rules=MAP * ~NOTFOUND``): a page that tried to fetch anything would fail and
log it, and the run's NetLog records every request the page started (:attr:`BrowserRun.requests`).
``--virtual-time-budget`` lets the page's scripts finish (figures drawn) before the DOM is
dumped or the screenshot taken. The report page records its full height in
``<body data-height>``, which :func:`screenshot` reads to capture the whole page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cortexmap.errors import CortexmapError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_HEIGHT = 16_000


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass(frozen=True)
class BrowserRun:
    """What one headless Chromium run left.

    Attributes:
        dom: the serialized DOM (``--dump-dom`` runs; empty otherwise).
        log: Chromium's log (stderr).
        console: the page's console messages, any level (Chromium logs them all as ``INFO:CONSOLE``).
        requests: network URLs the page itself requested (not ``file:``/``data:``; Chromium's own
            background requests are left out).
    """

    dom: str
    log: str
    console: list[str]
    requests: list[str]


def _console(log: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r":CONSOLE[^\]]*\] (.*)", log)]


def _page_requests(net_log: Path) -> list[str]:
    """URLs of requests initiated by the page (initiator is an origin; the browser's own have none)."""
    if not net_log.exists():
        return []
    text = net_log.read_text(errors="replace")
    try:
        events = json.loads(text)["events"]
    except (ValueError, KeyError):  # an unterminated log (Chromium killed): fall back to the raw URLs
        return sorted(set(re.findall(r'"url":"((?:https?|wss?|ftp)://[^"]+)"', text)))
    urls = set()
    for event in events:
        params = event.get("params") or {}
        url = str(params.get("url", ""))
        if url and params.get("initiator", "not an origin") != "not an origin" and not url.startswith(("file:", "data:", "blob:")):
            urls.add(url)
    return sorted(urls)


def _run(html_path: Path, action: list[str], *, width: int, height: int, budget_ms: int, timeout: float) -> BrowserRun:
    browser = find_chromium()
    if browser is None:
        raise CortexmapError("no Chromium found on PATH: install it (e.g. `apt-get install chromium`) and retry")
    if not html_path.exists():
        raise CortexmapError(f"{html_path} does not exist: render the report first")
    with tempfile.TemporaryDirectory(prefix="cortexmap-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
                   "--mute-audio", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                   "--enable-logging=stderr", "--v=0", f"--log-net-log={Path(profile) / 'net.json'}",
                   f"--window-size={width},{height}",
                   f"--virtual-time-budget={budget_ms}", *action, html_path.resolve().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CortexmapError(f"Chromium did not finish {html_path.name} within {timeout:.0f} s: retry, or "
                                 "raise the timeout on a slow machine") from None
        requests = _page_requests(Path(profile) / "net.json")
    return BrowserRun(done.stdout, done.stderr, _console(done.stderr), requests)


def rendered_dom(html_path: str | Path, *, width: int = 1400, height: int = 1000, png_path: str | Path | None = None,
                 budget_ms: int = 15_000, timeout: float = 180) -> BrowserRun:
    """Open a page in headless Chromium, let its scripts run, and return the DOM they leave.

    Args:
        html_path: the HTML file.
        width: window width in pixels.
        height: window height in pixels.
        png_path: also save a screenshot of the window here (same run).
        budget_ms: virtual time the page's scripts get before the DOM is dumped.
        timeout: wall-clock limit in seconds.

    Returns:
        The serialized DOM, Chromium's log, the page's console messages and network requests.

    Raises:
        CortexmapError: no Chromium on PATH, a missing file, or a timeout.
    """
    action = ["--dump-dom"] + ([f"--screenshot={Path(png_path).resolve()}"] if png_path is not None else [])
    return _run(Path(html_path), action, width=width, height=height, budget_ms=budget_ms, timeout=timeout)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1400, height: int | None = None,
               *, budget_ms: int = 15_000, timeout: float = 180) -> Path:
    """Save a PNG of a page as headless Chromium draws it.

    Args:
        html_path: the HTML file (e.g. a rendered report).
        png_path: the PNG to write.
        width: viewport width in pixels.
        height: viewport height in pixels; None captures the whole page (the height the report
            page records after drawing, up to 16,000 px; 2,400 px for other pages).
        budget_ms: virtual time the page's scripts get before the capture.
        timeout: wall-clock limit in seconds per Chromium run.

    Returns:
        ``png_path``.

    Raises:
        CortexmapError: no Chromium on PATH, a missing file, a timeout, or no PNG written.
    """
    html_path, png_path = Path(html_path), Path(png_path)
    if height is None:
        dom = rendered_dom(html_path, width=width, budget_ms=budget_ms, timeout=timeout).dom
        found = re.search(r'data-height="(\d+)"', dom)
        height = min(MAX_HEIGHT, int(found.group(1))) if found else 2400
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    run = _run(html_path, [f"--screenshot={png_path.resolve()}"], width=width, height=height, budget_ms=budget_ms,
               timeout=timeout)
    if not png_path.exists():
        tail = run.log.strip().splitlines()[-1:] or ["no log"]
        raise CortexmapError(f"Chromium wrote no screenshot of {html_path.name} ({tail[0][:200]}): check that it starts")
    return png_path
