"""The duplicate report in a real headless Chromium: it loads cleanly and shows the clusters.

The page is written by the report module from real images; Chromium (the system's, driven
by Playwright) loads it, and the test reads what a merchandiser would see.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from browser import file_url, needs_browser, open_page
from lookalike.stages.report_page import write_duplicate_report

pytestmark = [pytest.mark.slow, needs_browser]

HOSTILE = '<script>alert(1)</script><img src=x onerror="console.error(1)">'


def _photo(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (120, 90), colour).save(path, format="JPEG")
    return str(path)


def _member(cluster, sku, canonical, uri, score, title="a mug"):
    return {
        "cluster_id": cluster,
        "sku_id": sku,
        "canonical_sku_id": canonical,
        "category": "mugs",
        "title": title,
        "image_uri": uri,
        "is_active": True,
        "evidence": "content_hash,phash" if score == 1.0 else "embedding",
        "score": 1.0 if sku == canonical else score,
        "phash_distance": 0 if sku == canonical else 4,
        "min_score": score,
        "run_id": "2026-11-23",
    }


def test_report_loads_without_console_errors_and_shows_the_clusters(tmp_path):
    red = _photo(tmp_path / "red.jpg", (200, 30, 30))
    blue = _photo(tmp_path / "blue.jpg", (30, 30, 200))
    members = pd.DataFrame(
        [
            _member("dup-low", "s-3", "s-3", blue, 0.93),
            _member("dup-low", "s-4", "s-3", blue, 0.93, title=HOSTILE),
            _member("dup-exact", "s-1", "s-1", red, 1.0),
            _member("dup-exact", "s-2", "s-1", red, 1.0),
        ]
    )
    green = _photo(tmp_path / "green.jpg", (30, 200, 30))
    mismatches = pd.DataFrame(
        [
            {
                "sku_id": "s-9",
                "category": "mugs",
                "suggested_category": "plates",
                "suggested_share": 0.9,
                "own_share": 0.0,
                "suggested_score": 0.81,
                "own_best_score": 0.42,
                "neighbour_sku_ids": ["p-1", "p-2"],
                "neighbour_categories": ["plates", "plates"],
                "title": HOSTILE,
                "image_uri": green,
                "run_id": "2026-11-23",
            }
        ]
    )
    paths = write_duplicate_report(
        members, tmp_path / "report", run_id="2026-11-23", mismatches=mismatches
    )
    page = open_page(
        file_url(paths.html),
        selectors=(
            ".cluster .id",
            ".member .sku",
            ".member .title",
            "script",
            ".badge.canonical",
            ".mismatch .sku",
            ".mismatch .suggested",
            ".mismatch .title",
        ),
    )
    assert page.errors == []
    # Most confident first; every listing with its id; the seller's markup shown as text.
    assert page.texts[".cluster .id"] == ["dup-exact", "dup-low"]
    assert page.texts[".member .sku"] == ["s-1", "s-2", "s-3", "s-4"]
    assert HOSTILE in page.texts[".member .title"]
    assert page.texts["script"] == []
    assert len(page.texts[".badge.canonical"]) == 2
    # The category-mismatch section: the listing, the suggested category, the title as text.
    assert page.texts[".mismatch .sku"] == ["s-9", "p-1 (plates), p-2 (plates)"]
    assert page.texts[".mismatch .suggested"] == ["plates"]
    assert page.texts[".mismatch .title"] == [HOSTILE]
    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.format == "PNG" and shot.width >= 1000
    (tmp_path / "report" / "screenshot.png").write_bytes(page.screenshot)


def test_the_console_check_catches_a_broken_page(tmp_path):
    # The assertion above must be able to fail: a page with a missing image, a console error
    # and an uncaught exception.
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<html><body><img src="missing.png"><script>console.error("boom")</script>'
        '<script>throw new Error("kaboom")</script></body></html>'
    )
    errors = open_page(file_url(broken)).errors
    assert any("boom" in e for e in errors)
    assert any("kaboom" in e for e in errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)
