"""A merchandiser in a real headless Chromium, against the review app over a real nightly run.

The whole night runs on a small demo catalog of real photos (every title carries markup a
hostile seller could send); the service serves its published run; a reviewer signs in, marks a
cluster member "not a duplicate"; the decision is a row of ``duplicate_reviews``; the next
night no longer puts the pair together, and the service, refreshed, says so too. A browser
without a session is refused and writes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt

import pytest

from demo.catalog import generate_demo_catalog
from lookalike import tables
from lookalike.config import Config
from lookalike.pipeline import RunContext, run_nightly
from lookalike.serve.app import create_app, service_from_config
from lookalike.serve.auth import add_reviewer
from tests.browser import _ARGS, CHROMIUM, needs_browser, sync_playwright
from tests.serve.server import running

pytestmark = [pytest.mark.slow, needs_browser]

FIRST_NIGHT = dt.date(2026, 11, 30)
NEXT_NIGHT = dt.date(2026, 12, 1)
MARKUP = '<img src=x onerror="window.__pwned = 1"><b>'


def _with_hostile_titles(catalog_path):
    with open(catalog_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["title"] = MARKUP + (row.get("title") or "")
    with open(catalog_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def night(spark, tmp_path_factory, pretrained_weights):
    demo = generate_demo_catalog(tmp_path_factory.mktemp("catalog") / "demo", n_products=48)
    _with_hostile_titles(demo.catalog_path)
    output = tmp_path_factory.mktemp("output")
    config = Config().with_overrides(
        catalog={"path": str(demo.catalog_path)},
        output={"root": str(output)},
        neighbors={"k": 3},
        serve={"cache_dir": str(tmp_path_factory.mktemp("cache")), "refresh_seconds": 0},
    )
    run_nightly(spark, RunContext(config, FIRST_NIGHT))
    return config, output


def _clusters(output) -> dict[str, set[str]]:
    rows = tables.read_table(output / "tables" / "duplicate_clusters").to_pylist()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["cluster_id"], set()).add(row["sku_id"])
    return found


def _review_rows(output) -> list[dict]:
    path = output / "tables" / "duplicate_reviews"
    return tables.read_table(path).to_pylist() if tables.is_table(path) else []


def test_a_reviewer_marks_a_pair_and_the_next_night_drops_it(night, spark, tmp_path, monkeypatch):
    config, output = night
    secrets = tmp_path / "reviewers"
    token = add_reviewer(secrets, "ann")
    monkeypatch.setenv("LOOKALIKE_REVIEWERS_FILE", str(secrets))
    rows = tables.read_table(output / "tables" / "duplicate_clusters").to_pylist()
    member = next(r for r in rows if not r["is_canonical"])
    canonical = member["canonical_sku_id"]
    service = service_from_config(config)
    with running(create_app(service, refresh_in_background=False)) as client:
        base = f"http://127.0.0.1:{client.port}"
        errors: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=_ARGS
            )
            try:
                page = browser.new_page()
                page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
                page.on(
                    "console",
                    lambda m: errors.append(m.text) if m.type == "error" else None,
                )
                page.on(
                    "response",
                    lambda r: (
                        errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None
                    ),
                )
                page.goto(f"{base}/review/login")
                page.fill("input[name=name]", "ann")
                page.fill("input[name=token]", token)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/review/duplicates")
                assert page.locator(".reviewer").text_content() == "ann"

                page.goto(f"{base}/review/duplicates?sku={member['sku_id']}")
                card = page.locator(f'.member[data-sku="{member["sku_id"]}"]')
                # The hostile title is text on the page, never markup that runs.
                assert MARKUP in card.locator(".title").text_content()
                assert page.evaluate("() => window.__pwned === undefined")
                assert page.locator(".title b").count() == 0
                card.locator("button[value=not_duplicate]").click()
                page.wait_for_load_state("load")
                assert (
                    "not_duplicate by ann"
                    in page.locator(
                        f'.member[data-sku="{member["sku_id"]}"] .decided'
                    ).text_content()
                )

                # Another browser, no session: its post is refused and writes nothing.
                stranger = browser.new_context().request.post(
                    f"{base}/review/duplicates/decide",
                    form={
                        "cluster_id": member["cluster_id"],
                        "sku_id": member["sku_id"],
                        "decision": "confirmed",
                    },
                )
                assert stranger.status == 401
            finally:
                browser.close()
        assert errors == []
        reviews = _review_rows(output)
        assert [(r["decision"], r["reviewer"]) for r in reviews] == [("not_duplicate", "ann")]
        assert {reviews[0]["sku_id_a"], reviews[0]["sku_id_b"]} == {member["sku_id"], canonical}

        # The next night honours the decision, and the service serves that night once refreshed.
        run_nightly(spark, RunContext(config, NEXT_NIGHT))
        assert not any({member["sku_id"], canonical} <= skus for skus in _clusters(output).values())
        assert service.live.refresh() is True
        answer = client.get(f"/v1/duplicates/{member['sku_id']}").json()
        assert answer["run_id"] == NEXT_NIGHT.isoformat()
        cluster = answer["cluster"]
        assert cluster is None or canonical not in [m["sku_id"] for m in cluster["members"]]
