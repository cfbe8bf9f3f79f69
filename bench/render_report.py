"""Render a study's report.html to a PNG with headless Chromium, to check how the page looks.

    python bench/render_report.py runs/default [--output report.png] [--width 1400] [--height 4000]

Needs Debian's ``chromium`` (``apt-get install chromium``). The page is self-contained, so Chromium runs with
networking and background services off. Re-renders the report from the stored results first unless
``--no-render`` is given.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise SystemExit("no Chromium found; install it with: apt-get install chromium")


def screenshot(page: Path, output: Path, width: int, height: int, timeout: float = 120.0) -> Path:
    """Save a ``width`` x ``height`` screenshot of ``page`` to ``output`` (PNG)."""
    browser = find_browser()
    with tempfile.TemporaryDirectory(prefix="poolattn-chromium-") as profile:
        command = [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={output.resolve()}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not output.is_file():
        raise SystemExit(f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a study folder written by `poolattn experiment`")
    parser.add_argument("--output", type=Path, default=None, help="PNG to write (default: FOLDER/report.png)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--no-render", action="store_true", help="use the existing report.html as it is")
    args = parser.parse_args(argv)
    if not args.no_render:
        from poolattn.study.report import render_report

        render_report(args.folder)
    page = args.folder / "report.html"
    if not page.is_file():
        raise SystemExit(f"{page}: not found; run `poolattn report {args.folder}` first")
    output = screenshot(page, args.output or args.folder / "report.png", args.width, args.height)
    print(f"screenshot: {output} ({output.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
