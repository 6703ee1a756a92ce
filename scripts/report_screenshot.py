"""Screenshot of a run's duplicates report in a real headless Chromium, for the README.

    python scripts/report_screenshot.py var/reports/<run_id>/duplicates.html docs/report.png \
        --catalog var/demo_catalog

Drives the system's Chromium through Playwright's Python package (`pip install playwright`;
its own browser download is not needed: `executable_path` points at /usr/bin/chromium), loads
the self-contained page from disk with the network off, and saves the top of the page as a
palette PNG (256 colours keep the photos recognisable at a fraction of the size). With
`--catalog` (a demo catalog folder), the picture shows the page's summary and, of the
clusters, only one per planted kind named by `--kinds` (the others are hidden in the
screenshot, not in the file), so that one picture shows several kinds of seller copies.
"""

from __future__ import annotations

import argparse
import csv
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

# Hides the clusters that hold none of the given SKUs; returns the bottom of the last one shown.
SHOW_ONLY = """
(skus) => {
  let bottom = 0;
  for (const cluster of document.querySelectorAll("article.cluster")) {
    const names = [...cluster.querySelectorAll(".sku")].map((e) => e.textContent.trim());
    const keep = names.some((name) => skus.includes(name));
    cluster.style.display = keep ? "" : "none";
  }
  for (const cluster of document.querySelectorAll("article.cluster")) {
    if (cluster.style.display !== "none") {
      bottom = Math.max(bottom, cluster.getBoundingClientRect().bottom + window.scrollY);
    }
  }
  return bottom;
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the run's duplicates.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=760)
    parser.add_argument("--height", type=int, default=1300)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--catalog", type=Path, help="the demo catalog folder the run read")
    parser.add_argument("--kinds", default="padded,cropped,mirrored,watermarked")
    args = parser.parse_args(argv)
    skus: list[str] = []
    if args.catalog:
        with (args.catalog / "planted_duplicates.csv").open(newline="", encoding="utf-8") as f:
            planted = list(csv.DictReader(f))
        for kind in args.kinds.split(","):
            skus += [p["sku_id"] for p in planted if p["transform"] == kind][:1]
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
            if skus:
                bottom = page.evaluate(SHOW_ONLY, skus)
                page.set_viewport_size({"width": args.width, "height": int(bottom) + 16})
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
