"""Ingest of the optional item_group_id (the variants of one product): trimmed and checked
like an id, kept in the catalog, null where the feed has no such column."""

from __future__ import annotations

import json
import re

import pytest

from lookalike.stages.ingest import CATALOG_SCHEMA, read_catalog, validate_catalog

pytestmark = pytest.mark.slow

COLUMNS = ["sku_id", "category", "image_uri", "is_active", "item_group_id"]


def _raw(spark, rows):
    """rows: (sku_id, category, image_uri, is_active, item_group_id); no title, no updated_at."""
    return spark.createDataFrame(
        [(*r, None, None) for r in rows],
        ", ".join(f"{c} string" for c in (*COLUMNS, "title", "updated_at")),
    )


def test_item_group_id_is_trimmed_and_checked_like_an_id(spark):
    raw_df = _raw(
        spark,
        [
            ("A", "dresses", "a.jpg", "true", " DRESS-1 "),
            ("B", "dresses", "b.jpg", "true", "DRESS-1"),
            ("C", "dresses", "c.jpg", "true", "   "),  # blank: no group
            ("D", "dresses", "d.jpg", "true", None),
            ("E", "dresses", "e.jpg", "true", "DR\tESS"),
            ("F", "dresses", "f.jpg", "true", "x" * 257),
            ("G", "dresses", "g.jpg", "true", "x" * 256),
            ("H", "dresses", "h.jpg", "true", "Robe \u00e9t\u00e9 \u2615"),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    groups = {r.sku_id: r.item_group_id for r in catalog_df.collect()}
    assert groups == {
        "A": "DRESS-1",
        "B": "DRESS-1",
        "C": None,
        "D": None,
        "G": "x" * 256,
        "H": "Robe \u00e9t\u00e9 \u2615",
    }
    got = {r.sku_id: (r.reason, r.detail) for r in rejects_df.collect()}
    assert got == {
        "E": (
            "invalid_item_group_id",
            "item_group_id holds control character U+0009 at position 3",
        ),
        "F": (
            "item_group_id_too_long",
            "item_group_id is 257 characters long, over catalog.max_sku_id_length 256",
        ),
    }
    for r in rejects_df.collect():
        assert not re.search(r"[\x00-\x1f\x7f]", r.detail)
    # The record is the row as sent, the value untrimmed.
    records = {r.sku_id: json.loads(r.record) for r in rejects_df.collect()}
    assert records["E"]["item_group_id"] == "DR\tESS"
    # The id's own checks come first: a bad sku_id is rejected for that.
    raw_df = _raw(spark, [("Z\x00", "dresses", "z.jpg", "true", "G\x01")])
    _, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    assert [r.reason for r in rejects_df.collect()] == ["invalid_sku_id"]


def test_a_catalog_without_item_group_id_reads_as_no_groups(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("sku_id,category,image_uri,is_active\nA,mugs,a.jpg,true\nB,mugs,b.jpg,true\n")
    raw_df = read_catalog(spark, str(path))
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir=str(tmp_path), image_roots=[]
    )
    assert rejects_df.count() == 0
    assert catalog_df.columns == CATALOG_SCHEMA.fieldNames()
    assert [r.item_group_id for r in catalog_df.collect()] == [None, None]


def test_a_csv_feed_with_item_group_id_keeps_it(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text(
        "sku_id,item_group_id,category,image_uri,is_active\n"
        "A,G1,dresses,a.jpg,true\nB, G1 ,dresses,b.jpg,true\nC,,dresses,c.jpg,true\n"
    )
    catalog_df, _ = validate_catalog(
        read_catalog(spark, str(path)), run_id="r1", base_dir=str(tmp_path), image_roots=[]
    )
    assert catalog_df.columns == CATALOG_SCHEMA.fieldNames()
    assert {r.sku_id: r.item_group_id for r in catalog_df.collect()} == {
        "A": "G1",
        "B": "G1",
        "C": None,
    }
