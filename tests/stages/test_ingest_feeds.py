"""The ingest stage reading a shop's feed as it is: Google Merchant XML and a Shopify export.

The feeds are written here, in the shape their exporters write them; the stage runs on the real
Spark session and its catalog and rejects are read back.
"""

from __future__ import annotations

import csv
import datetime as dt

import pandas as pd
import pytest

from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage
from lookalike.stages.ingest import CatalogError, read_catalog

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 12, 1)
CDN = "https://cdn.shop.example/img/"

MERCHANT_RSS = f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">
<channel>
  <title>Shop</title>
  <item>
    <g:id>DRESS-1-S</g:id>
    <title><![CDATA[Linen dress <script>alert(1)</script>, "S"]]></title>
    <g:image_link>{CDN}dress-1.jpg</g:image_link>
    <g:additional_image_link>{CDN}dress-1-back.jpg</g:additional_image_link>
    <g:product_type>Women &gt; Dresses</g:product_type>
    <g:availability>in_stock</g:availability>
    <g:item_group_id>DRESS-1</g:item_group_id>
    <g:price>59.00 EUR</g:price>
  </item>
  <item>
    <g:id>DRESS-1-M</g:id>
    <title>Linen dress, M</title>
    <g:image_link>{CDN}dress-1.jpg</g:image_link>
    <g:product_type>Women &gt; Dresses</g:product_type>
    <g:availability>out_of_stock</g:availability>
    <g:item_group_id>DRESS-1</g:item_group_id>
  </item>
  <item>
    <g:id>SHOE-9</g:id>
    <title>Trainer</title>
    <g:image_link>{CDN}shoe-9.jpg</g:image_link>
    <g:google_product_category>Apparel &amp; Accessories &gt; Shoes</g:google_product_category>
    <g:availability>discontinued</g:availability>
  </item>
  <item>
    <title>No id at all</title>
    <g:image_link>{CDN}lost.jpg</g:image_link>
    <g:product_type>Women &gt; Dresses</g:product_type>
    <g:availability>in stock</g:availability>
  </item>
</channel>
</rss>
"""


def _config(tmp_path, feed, **catalog) -> Config:
    return Config().with_overrides(
        catalog={"path": str(feed), "image_roots": [CDN], **catalog},
        output={"root": str(tmp_path / "out")},
    )


def _ingested(spark, config: Config) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    ctx = RunContext(config, DAY)
    counts = run_stage("ingest", spark, ctx).counts
    catalog = pd.read_parquet(ctx.layout.catalog).set_index("sku_id").sort_index()
    rejects = pd.read_parquet(ctx.layout.rejects("ingest"))
    return catalog, rejects, counts


def test_a_google_merchant_rss_feed_is_ingested_as_sent(spark, tmp_path):
    feed = tmp_path / "products.xml"
    feed.write_text(MERCHANT_RSS, encoding="utf-8")
    catalog, rejects, counts = _ingested(spark, _config(tmp_path, feed))

    assert counts == {"rows_read": 4, "valid": 2, "rejected": 2}
    assert list(catalog.index) == ["DRESS-1-M", "DRESS-1-S"]
    dress = catalog.loc["DRESS-1-S"]
    assert dress["category"] == "Women > Dresses"
    assert dress["category_path"] == "Women > Dresses"
    assert dress["image_uri"] == f"{CDN}dress-1.jpg"
    assert dress["title"] == 'Linen dress <script>alert(1)</script>, "S"'  # text, kept as sent
    assert dress["is_active"]
    assert not catalog.loc["DRESS-1-M", "is_active"]  # out_of_stock
    assert set(catalog["item_group_id"]) == {"DRESS-1"}
    by_reason = dict(zip(rejects["reason"], rejects["record"], strict=True))
    assert set(by_reason) == {"missing_sku_id", "invalid_is_active"}
    assert "discontinued" in by_reason["invalid_is_active"]


def test_a_shopify_export_gives_one_row_per_variant(spark, tmp_path):
    feed = tmp_path / "products_export.csv"
    header = [
        "Handle",
        "Title",
        "Type",
        "Product Category",
        "Option1 Name",
        "Option1 Value",
        "Variant SKU",
        "Image Src",
        "Image Position",
        "Variant Image",
        "Status",
    ]
    rows = [
        [
            "linen-dress",
            'Linen dress, "summer"',
            "Dresses",
            "Apparel & Accessories > Dresses",
            "Colour",
            "Blue",
            "LD-BLUE",
            f"{CDN}ld-1.jpg",
            "1",
            "",
            "active",
        ],
        [
            "linen-dress",
            "",
            "",
            "",
            "",
            "Red",
            "LD-RED",
            f"{CDN}ld-2.jpg",
            "2",
            f"{CDN}ld-red.jpg",
            "",
        ],
        ["linen-dress", "", "", "", "", "", "", f"{CDN}ld-3.jpg", "3", "", ""],
        [
            "old-hat",
            "Old hat",
            "Hats",
            "",
            "Title",
            "Default Title",
            "HAT-1",
            f"{CDN}hat.jpg",
            "1",
            "",
            "archived",
        ],
    ]
    with feed.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    catalog, rejects, counts = _ingested(spark, _config(tmp_path, feed))

    # The image-only third line of the dress is folded into its product, not a listing.
    assert counts == {"rows_read": 3, "valid": 3, "rejected": 0}
    assert list(catalog.index) == ["HAT-1", "LD-BLUE", "LD-RED"]
    assert catalog.loc["LD-BLUE", "image_uri"] == f"{CDN}ld-1.jpg"
    assert catalog.loc["LD-RED", "image_uri"] == f"{CDN}ld-red.jpg"  # the variant's own image
    assert catalog.loc["LD-RED", "category"] == "Dresses"
    assert catalog.loc["LD-RED", "title"].startswith('Linen dress, "summer"')
    assert catalog.loc["LD-BLUE", "is_active"] and not catalog.loc["HAT-1", "is_active"]
    assert catalog["item_group_id"].to_dict() == {
        "HAT-1": "old-hat",
        "LD-BLUE": "linen-dress",
        "LD-RED": "linen-dress",
    }
    assert rejects.empty


def test_feed_images_outside_the_configured_prefixes_are_rejected_at_ingest(spark, tmp_path):
    feed = tmp_path / "products.xml"
    feed.write_text(MERCHANT_RSS, encoding="utf-8")
    config = _config(tmp_path, feed, image_roots=["https://other-cdn.example/"])
    # Every row is then rejected, so the run stops, saying why.
    with pytest.raises(
        CatalogError, match=r"all 4 rows .*: 3 image_outside_roots, 1 missing_sku_id"
    ):
        run_stage("ingest", spark, RunContext(config, DAY))


def test_a_feed_missing_its_required_columns_is_an_error_naming_them(spark, tmp_path):
    feed = tmp_path / "feed.tsv"
    feed.write_text("id\ttitle\timage_link\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="shopify"):
        read_catalog(spark, str(feed), "shopify")
