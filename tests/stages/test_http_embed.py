"""The embed stage reading product photos over HTTP from a real server on loopback.

The server (tests/http_server.py) serves real JPEGs with ETags and misbehaves on purpose on
some paths; loopback is allowed only because the image root names it. Two nights run the real
ingest and embed stages (random weights: these tests check what is fetched, not what the
vectors mean): the first downloads every image once, the second asks with conditional GETs
only and downloads nothing unchanged. Every failure is a reject with its own reason.
"""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage
from tests.http_server import image_server, jpeg_bytes

pytestmark = pytest.mark.slow

NIGHT1, NIGHT2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
GOOD = [f"/img/p{i}.jpg" for i in range(6)]


def _catalog(folder, rows: dict[str, str]):
    path = folder / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        for sku, url in rows.items():
            writer.writerow([sku, "things", url, f"thing {sku}", "true"])
    return path


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("http-embed")
    with image_server() as server:
        for i, path in enumerate(GOOD):
            server.add_image(path, jpeg_bytes((64 + 8 * i, 48), (30 * i, 200 - 20 * i, 90)))
        server.add_image("/img/flaky.jpg", jpeg_bytes((50, 50), (10, 10, 200)))
        server.set_fault("/img/flaky.jpg", status=500, times=1)  # 500 once, then the image
        server.set_fault("/img/gone.jpg", status=404)
        server.add_image("/img/slow.jpg", jpeg_bytes())
        server.set_fault("/img/slow.jpg", delay=5.0)
        server.add_image("/img/huge.jpg", jpeg_bytes())
        server.set_fault("/img/huge.jpg", body_size=300_000, chunked=True)
        server.set_fault("/img/away.jpg", status=302, location="http://example.invalid/x.jpg")
        rows = {f"SKU-{i}": server.url(path) for i, path in enumerate(GOOD)}
        rows |= {
            "SKU-FLAKY": server.url("/img/flaky.jpg"),
            "SKU-GONE": server.url("/img/gone.jpg"),
            "SKU-SLOW": server.url("/img/slow.jpg"),
            "SKU-HUGE": server.url("/img/huge.jpg"),
            "SKU-AWAY": server.url("/img/away.jpg"),
            "SKU-OUTSIDE": server.url("/private/secret.jpg"),
        }
        config = Config().with_overrides(
            catalog={"path": str(_catalog(folder, rows)), "image_roots": [server.url("/img/")]},
            output={"root": str(folder / "out")},
            model={"weights": "random", "allow_random_weights": True},
            embed={"max_image_bytes": 200_000},
            http={"read_timeout": 1.5, "retries": 1, "backoff_seconds": 0.05},
        )

        def night(day: dt.date):
            ctx = RunContext(config, day)
            run_stage("ingest", spark, ctx)
            result = run_stage("embed", spark, ctx)
            log = list(server.requests)
            server.clear_log()
            return ctx, result.counts, log

        first = night(NIGHT1)
        server.set_fault("/img/flaky.jpg", None)  # the log (and its hit counts) starts afresh
        second = night(NIGHT2)
    return first, second


def _vectors(ctx) -> pd.DataFrame:
    return pd.read_parquet(ctx.layout.embeddings).set_index("sku_id").sort_index()


def _rejects(ctx) -> dict[str, str]:
    rejects = pd.concat(
        [
            pd.read_parquet(ctx.layout.rejects("ingest")),
            pd.read_parquet(ctx.layout.rejects("embed")),
        ]
    )
    return dict(zip(rejects["sku_id"], rejects["reason"], strict=True))


def test_the_first_night_downloads_each_good_image_and_rejects_each_bad_one(nights):
    (ctx, counts, log), _ = nights
    assert sorted(_vectors(ctx).index) == sorted([f"SKU-{i}" for i in range(6)] + ["SKU-FLAKY"])
    assert _rejects(ctx) == {
        "SKU-GONE": "image_http_404",
        "SKU-SLOW": "image_http_timeout",
        "SKU-HUGE": "image_http_too_large",
        "SKU-AWAY": "image_url_not_allowed",
        "SKU-OUTSIDE": "image_outside_roots",  # refused at ingest: never asked for
    }
    assert counts["http_downloads"] == 7 and counts["http_not_modified"] == 0
    paths = [r.path for r in log]
    assert "/private/secret.jpg" not in paths
    for path in GOOD:
        assert paths.count(path) == 1, path  # one download per image, not one per pass
    assert paths.count("/img/flaky.jpg") == 2  # the 500, then the retry
    versions = _vectors(ctx)["image_version"]
    assert all(v.startswith('etag="') for v in versions), versions


def test_the_unchanged_night_asks_conditionally_and_downloads_nothing_unchanged(nights):
    (day1, _, _), (day2, counts, log) = nights
    assert counts["reused_by_listing"] == 7
    assert counts["embedded"] == 0
    assert counts["http_not_modified"] == 7
    unchanged = [r for r in log if r.path in GOOD or r.path == "/img/flaky.jpg"]
    assert len(unchanged) == 7, "; ".join(f"{r.path} {r.status}" for r in unchanged)
    for request in unchanged:
        assert "if-none-match" in {k.lower() for k in request.headers}, request
        assert request.status == 304, request
    before, after = _vectors(day1), _vectors(day2)
    for sku in before.index:
        assert np.array_equal(before.loc[sku, "embedding"], after.loc[sku, "embedding"]), sku
    # The bad images are asked again (they have no stored version) and rejected again.
    assert _rejects(day2) == _rejects(day1)
