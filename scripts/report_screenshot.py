"""Screenshot of a run's duplicates report in a real headless Chromium, for the README.

    python scripts/report_screenshot.py var/reports/<run_id>/duplicates.html docs/report.png

Drives the system's Chromium through Playwright's Python package (`pip install playwright`;
its own browser download is not needed: `executable_path` points at /usr/bin/chromium), loads
the self-contained page from disk with the network off, and saves the top of the page as a
palette PNG (256 colours keep the photos recognisable at a fraction of the size).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the run's duplicates.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1300)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
        try:
            context = browser.new_context(
                viewport={"width": args.width, "height": args.height}, offline=True
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(args.report.resolve().as_uri(), wait_until="load")
            png = page.screenshot(full_page=False)
        finally:
            browser.close()
    if errors:
        print(f"page errors: {errors}", file=sys.stderr)
        return 1
    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.out, optimize=True)
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
