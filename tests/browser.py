"""A real headless Chromium driven by Playwright, for testing pages as users see them.

``open_page(url)`` loads a page and returns what a person (and the console) would see: the
console errors, uncaught script errors and failed loads, the text of elements matching CSS
selectors, and a PNG screenshot of the whole page.

No mocks: Playwright's Python package (a dev dependency) drives the system's Chromium
(``apt-get install chromium``); Playwright's own browser downloads are never used. Tests that
need it mark themselves with ``needs_browser`` and skip with the reason when either is absent.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

if CHROMIUM is None:
    MISSING: str | None = "chromium is not installed (apt-get install chromium)"
elif sync_playwright is None:
    MISSING = "playwright is not installed (pip install -e '.[dev]')"
else:
    MISSING = None

needs_browser = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# Chromium's own sandbox needs privileges a container or CI runner seldom grants.
_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
_VIEWPORT = {"width": 1280, "height": 1600}
_TIMEOUT_MS = 30_000


@dataclass
class PageView:
    errors: list[str] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)
    screenshot: bytes = b""


def open_page(url: str, selectors: tuple[str, ...] = (), settle_s: float = 0.5) -> PageView:
    """Load ``url`` in a fresh headless Chromium; errors, texts per selector, screenshot."""
    if MISSING is not None:
        raise RuntimeError(MISSING)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=_ARGS)
        try:
            page = browser.new_page(viewport=_VIEWPORT)
            page.set_default_timeout(_TIMEOUT_MS)
            page.on(
                "console",
                lambda message: (
                    errors.append(
                        f"console.{message.type}: {message.text} ({message.location.get('url')})"
                    )
                    if message.type in ("error", "assert")
                    else None
                ),
            )
            page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
            page.on(
                "requestfailed",
                lambda request: errors.append(f"failed: {request.url} {request.failure}"),
            )
            page.on(
                "response",
                lambda response: (
                    errors.append(f"HTTP {response.status}: {response.url}")
                    if response.status >= 400
                    else None
                ),
            )
            page.goto(url, wait_until="load")
            page.wait_for_timeout(settle_s * 1000)  # late console messages and resource errors
            texts = {
                selector: page.eval_on_selector_all(
                    selector, "elements => elements.map(e => e.textContent.trim())"
                )
                for selector in selectors
            }
            shot = page.screenshot(type="png", full_page=True)
            return PageView(list(errors), texts, shot)
        finally:
            browser.close()


def file_url(path: os.PathLike[str]) -> str:
    return Path(path).resolve().as_uri()
