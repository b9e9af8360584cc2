#!/usr/bin/env python3
"""Render a qnas HTML report in headless Chromium: screenshot it and check every plot was drawn.

    python scripts/render_check.py studies/NAME/report.html shot.png

Two Chromium runs: ``--dump-dom`` (after plotly.js ran) proves every plot div became a plot with
SVG traces and that no script error was logged; ``--screenshot`` gives a PNG to look at, checked to be
the window size and not blank. Exit 0 when all checks pass, 1 when one fails (a report of a study
without feasible trials fails too: it has no traces), 2 on bad usage or when Chromium is missing.
Standard library only (no Pillow): the PNG is checked from its zlib stream.
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

WINDOW = (1400, 3000)
# Offline and quiet: no network, no first-run UI, no background updates; a throwaway profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=8000")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _chromium(binary: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="qnas-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_dom(dom: str, log: str) -> list[str]:
    """Problems found in the rendered DOM and Chromium's console log (empty list: fine)."""
    problems = []
    divs = len(re.findall(r'class="plotly-graph-div[ "]', dom))
    drawn = len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom))
    svgs = dom.count('class="main-svg"')
    traces = len(re.findall(r'class="trace scatter', dom))
    if divs == 0:
        problems.append("no plotly plot divs in the page")
    if drawn < divs:
        problems.append(f"only {drawn} of {divs} plots were drawn by plotly.js")
    if svgs < 2 * divs:  # plotly draws two main SVG layers per plot
        problems.append(f"{svgs} main-svg elements for {divs} plots")
    if traces == 0:
        problems.append("no scatter traces rendered")
    errors = [line for line in log.splitlines() if "Uncaught" in line or "CONSOLE" in line and "Error" in line]
    problems.extend(f"script error: {line.strip()[:200]}" for line in errors)
    return problems


def check_png(path: Path, size: tuple[int, int]) -> list[str]:
    """The PNG has the window size and is not blank (many distinct byte values in its pixel stream)."""
    data = path.read_bytes() if path.exists() else b""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return [f"{path} is not a PNG"]
    width, height = struct.unpack(">II", data[16:24])
    problems = [] if (width, height) == size else [f"screenshot is {width}x{height}, expected {size[0]}x{size[1]}"]
    idat, pos = b"", 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    distinct = len(set(zlib.decompress(idat)))
    # A blank page filters to a handful of byte values; text, plots and colours give well over 100.
    if distinct < 64:
        problems.append(f"screenshot looks blank ({distinct} distinct byte values in its pixel stream)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="HTML report to render")
    ap.add_argument("png", type=Path, help="screenshot to write")
    ap.add_argument("--timeout", type=float, default=90, help="seconds per Chromium run (default 90)")
    args = ap.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("render_check: chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if not args.report.is_file():
        print(f"render_check: no such file {args.report}", file=sys.stderr)
        return 2
    url = args.report.resolve().as_uri()
    dom = _chromium(binary, ["--dump-dom"], url, args.timeout)
    problems = check_dom(dom.stdout, dom.stderr)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.unlink(missing_ok=True)
    shot = _chromium(binary, [f"--screenshot={args.png.resolve()}", f"--window-size={WINDOW[0]},{WINDOW[1]}"],
                     url, args.timeout)
    if shot.returncode != 0:
        problems.append(f"chromium --screenshot exited {shot.returncode}: {shot.stderr.strip()[-300:]}")
    problems += check_png(args.png, WINDOW)
    plots = len(re.findall(r'class="plotly-graph-div[ "]', dom.stdout))
    for p in problems:
        print(f"render_check: FAIL {p}", file=sys.stderr)
    if not problems:
        print(f"render_check: ok, {plots} plots drawn, screenshot {args.png} ({args.png.stat().st_size:,} bytes)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
