#!/usr/bin/env python3
"""Render a report in headless Chromium and save a screenshot: a real browser reads the page.

    python scripts/screenshot_report.py runs/x/report.html report.png --width 1280 --height 2000

Chromium runs with no network features (no sync, no component updates, no QUIC, a throw-away
profile), so the screenshot also shows that the page needs nothing from outside. Debian/Ubuntu:
``apt-get install chromium``. Exits with status 2 and a clear message when Chromium is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--disable-extensions",
         "--default-background-color=ffffffff")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH (or /usr/bin/chromium); None if there is none."""
    override = os.environ.get("CHROMIUM")
    if override and Path(override).is_file():
        return override
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


#: put element ``id`` at the top of the page: hide whatever comes before it, level by level
_FOCUS = """<script>document.addEventListener("DOMContentLoaded", function () {
  var el = document.getElementById(%s); if (!el) { return; }
  for (var node = el; node && node.parentNode && node !== document.body; node = node.parentNode) {
    for (var s = node.previousElementSibling; s; s = s.previousElementSibling) {
      if (s.tagName !== "ASIDE" && s.tagName !== "SCRIPT" && s.tagName !== "STYLE") {
        s.style.display = "none";
      }
    }
  }
});</script>"""


def focused_copy(report: Path, element: str) -> Path:
    """A copy of ``report`` beside it that starts at the element ``element`` (for screenshots of
    one part of a long page); the caller removes it."""
    html = Path(report).read_text(encoding="utf-8")
    copy = Path(report).with_name(f".{Path(report).stem}.focus-{os.getpid()}.html")
    copy.write_text(html.replace("</head>", _FOCUS % json.dumps(element) + "</head>", 1),
                    encoding="utf-8")
    return copy


def screenshot(report: Path, out: Path, width: int = 1280, height: int = 2000,
               timeout: float = 120.0, fragment: str = "", element: str = "") -> Path:
    """Save a ``width``×``height`` PNG of ``report`` as Chromium draws it; raise on failure."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("Chromium was not found (looked for " + ", ".join(CANDIDATES)
                                + "); install it, e.g. `apt-get install chromium`, "
                                "or set CHROMIUM=/path/to/chrome")
    report, out = Path(report).resolve(), Path(out).resolve()
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no such report")
    out.parent.mkdir(parents=True, exist_ok=True)
    page = focused_copy(report, element) if element else report
    try:
        with tempfile.TemporaryDirectory(prefix="lymphomil-chromium-") as profile:
            command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
                       f"--window-size={width},{height}",
                       page.as_uri() + (f"#{fragment}" if fragment else "")]
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  check=False, env={**os.environ, "HOME": profile})
    finally:
        if element:
            page.unlink(missing_ok=True)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}):\n"
                           + done.stderr[-2000:])
    return out


def dump_dom(report: Path, fragment: str = "", timeout: float = 120.0) -> str:
    """The page's DOM after its scripts ran (``fragment``: e.g. ``sort=p-desc``), as HTML text."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("Chromium was not found (looked for " + ", ".join(CANDIDATES)
                                + ")")
    url = Path(report).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory(prefix="lymphomil-chromium-") as profile:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "HOME": profile})
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"Chromium dumped no page (exit {done.returncode}):\n"
                           + done.stderr[-2000:])
    return done.stdout


#: measures the page's key elements once it has loaded and hands them to the wrapper page
_MEASURE = """<script>window.addEventListener("load", function () {
  var out = {width: document.documentElement.clientWidth, elements: {}};
  %s.forEach(function (sel) {
    var el = document.querySelector(sel); if (!el) { return; }
    var r = el.getBoundingClientRect();
    out.elements[sel] = {left: r.left, right: r.right, top: r.top + window.scrollY,
                         width: r.width, height: r.height, shown: r.width > 0 && r.height > 0};
  });
  parent.postMessage(JSON.stringify(out), "*");
});</script>"""
#: the page in a frame of the wanted width (a headless window is at least 500 px wide; a frame
#: of any width applies the page's media queries as a phone of that width would)
_WRAPPER = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="%s" style="width:%dpx;height:%dpx;border:0"></iframe><pre id="layout-json"></pre>
<script>window.addEventListener("message", function (e) {
  document.getElementById("layout-json").textContent = e.data; });</script></body></html>"""


def measure_layout(report: Path, selectors: list[str], width: int = 420, height: int = 2000,
                   timeout: float = 120.0) -> dict:
    """Where Chromium puts each CSS selector's first element in a ``width`` px wide viewport:
    {"width": viewport width, "elements": {selector: {left, right, top, width, height, shown}}}
    (absent: no such element)."""
    import html as html_module
    import re

    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("Chromium was not found (looked for " + ", ".join(CANDIDATES)
                                + ")")
    report = Path(report).resolve()
    copy = report.with_name(f".{report.stem}.measure-{os.getpid()}.html")
    wrapper = report.with_name(f".{report.stem}.frame-{os.getpid()}.html")
    copy.write_text(report.read_text(encoding="utf-8").replace(
        "</head>", _MEASURE % json.dumps(selectors) + "</head>", 1), encoding="utf-8")
    wrapper.write_text(_WRAPPER % (copy.name, width, height), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="lymphomil-chromium-") as profile:
            done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}",
                                   f"--window-size={max(width, 500) + 40},{height}",
                                   "--virtual-time-budget=10000", "--dump-dom",
                                   wrapper.as_uri()], capture_output=True, text=True,
                                  timeout=timeout, check=False, env={**os.environ, "HOME": profile})
    finally:
        copy.unlink(missing_ok=True)
        wrapper.unlink(missing_ok=True)
    found = re.search(r'<pre id="layout-json">(.+?)</pre>', done.stdout, re.DOTALL)
    if not found:
        raise RuntimeError(f"Chromium measured nothing (exit {done.returncode}):\n"
                           + done.stderr[-2000:])
    return json.loads(html_module.unescape(found.group(1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report.html to render")
    parser.add_argument("out", type=Path, help="where to save the PNG screenshot")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    parser.add_argument("--fragment", default="",
                        help="part of the page to show, e.g. calibration (an element id) or "
                             "sort=p-desc (the patient table sorted on load)")
    parser.add_argument("--element", default="",
                        help="id of the element to start the screenshot at (e.g. calibration, "
                             "patient-P12): what comes before it is hidden")
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.report, args.out, args.width, args.height, args.timeout,
                          args.fragment, args.element)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"screenshot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
