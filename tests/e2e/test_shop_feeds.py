"""A shop's own feeds, end to end: photos over HTTP, variants kept apart.

A Google Merchant RSS feed and a Shopify export are written here as their exporters write
them, every photo an ``http://`` link to a real server on loopback (serving the demo's real
photos, demo/sample/); the whole nightly job runs on each (real MobileNet-V2 weights) and
publishes. Variants of one product (``item_group_id``, a Shopify handle) share a photo: they
must not be each other's similar items nor a duplicate cluster, while a seller's copy of a
listing (same photo, another product) still is.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from lookalike import tables
from lookalike.config import Config
from lookalike.pipeline import RunContext, run_nightly
from tests.http_server import image_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "demo" / "sample"
NIGHT = dt.date(2026, 12, 1)
CATEGORIES = {"dress": "Women > Dresses", "shirt": "Men > Shirts", "shoes": "Shoes"}


def _photos(per_category: int) -> dict[str, list[str]]:
    with (SAMPLE / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {c: [r["file"] for r in rows if r["category"] == c][:per_category] for c in CATEGORIES}


def _merchant_rss(base: str) -> str:
    items = []

    def item(sku, photo, category, group=None, title=None):
        group_tag = f"<g:item_group_id>{group}</g:item_group_id>" if group else ""
        items.append(
            f"<item><g:id>{sku}</g:id><title>{title or sku}</title>"
            f"<g:image_link>{base}{photo}</g:image_link>"
            f"<g:product_type>{CATEGORIES[category].replace('>', '&gt;')}</g:product_type>"
            f"<g:availability>in_stock</g:availability>{group_tag}</item>"
        )

    for category, photos in _photos(7).items():
        for i, photo in enumerate(photos):
            if i == 0:  # one product in three sizes, one photo
                for size in ("S", "M", "L"):
                    item(f"{category}-{i}-{size}", photo, category, f"{category}-{i}")
            else:
                item(f"{category}-{i}", photo, category)
    # A seller's copy of dress-1: another product, the same photo.
    item("dress-1-copy", _photos(7)["dress"][1], "dress", title="cheap copy")
    return (
        '<?xml version="1.0"?><rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">'
        f"<channel><title>shop</title>{''.join(items)}</channel></rss>"
    )


def _shopify_csv(path: Path, base: str) -> None:
    header = [
        "Handle",
        "Title",
        "Type",
        "Option1 Name",
        "Option1 Value",
        "Variant SKU",
        "Image Src",
        "Image Position",
        "Status",
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for category, photos in _photos(7).items():
            for i, photo in enumerate(photos):
                handle_name = f"{category}-{i}"
                sizes = ("S", "M", "L") if i == 0 else ("One",)
                for n, size in enumerate(sizes):
                    writer.writerow(
                        [
                            handle_name,
                            f"{category} {i}" if n == 0 else "",
                            CATEGORIES[category] if n == 0 else "",
                            "Size",
                            size,
                            f"{handle_name}-{size}",
                            f"{base}{photo}" if n == 0 else "",
                            "1" if n == 0 else "",
                            "active" if n == 0 else "",
                        ]
                    )


def _group_of(sku: str) -> str | None:
    # dress-0-S, dress-0-M, dress-0-L are one product in both feeds.
    parts = sku.split("-")
    return "-".join(parts[:2]) if len(parts) == 3 and parts[2] in ("S", "M", "L") else None


def _nightly(spark, tmp_path, feed: Path, base: str) -> Path:
    output = tmp_path / "output"
    config = Config().with_overrides(
        catalog={"path": str(feed), "image_roots": [base]},
        output={"root": str(output)},
        neighbors={"k": 3},
    )
    run_nightly(spark, RunContext(config, NIGHT))
    return output / "tables"


def _check_variants_apart(tables_dir: Path) -> dict[str, set[str]]:
    """The published clusters, after checking that no two variants of a product meet."""
    similar = tables.read_table(tables_dir / "similar_items").to_pylist()
    variant_rows = [r for r in similar if _group_of(r["sku_id"])]
    assert variant_rows, "the variants got no similar items at all"
    for row in variant_rows:
        assert _group_of(row["similar_sku_id"]) != _group_of(row["sku_id"])
    clusters: dict[str, set[str]] = {}
    for row in tables.read_table(tables_dir / "duplicate_clusters").to_pylist():
        clusters.setdefault(row["cluster_id"], set()).add(row["sku_id"])
    for members in clusters.values():
        groups = [_group_of(s) for s in members if _group_of(s)]
        assert len(groups) == len(set(groups)), members
    catalog = tables.read_table(tables_dir / "catalog").to_pylist()
    assert {r["item_group_id"] for r in catalog if r["sku_id"].startswith("dress-0-")} == {
        "dress-0"
    }
    return clusters


def test_a_merchant_feed_over_http_runs_end_to_end(spark, tmp_path, pretrained_weights):
    with image_server(root=SAMPLE) as server:
        base = server.url("/")
        feed = tmp_path / "products.xml"
        feed.write_text(_merchant_rss(base), encoding="utf-8")
        tables_dir = _nightly(spark, tmp_path, feed, base)
    clusters = _check_variants_apart(tables_dir)
    assert {"dress-1", "dress-1-copy"} in clusters.values()


def test_a_shopify_export_over_http_runs_end_to_end(spark, tmp_path, pretrained_weights):
    with image_server(root=SAMPLE) as server:
        base = server.url("/")
        feed = tmp_path / "products_export.csv"
        _shopify_csv(feed, base)
        tables_dir = _nightly(spark, tmp_path, feed, base)
    _check_variants_apart(tables_dir)
