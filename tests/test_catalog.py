"""Ingest validation: every row lands in the catalog or in rejects, with a reason."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from lookalike.catalog import (
    CatalogError,
    read_catalog,
    validate_catalog,
)

pytestmark = pytest.mark.slow

COLUMNS = ["sku_id", "category", "image_uri", "is_active", "title", "updated_at"]


def _raw(spark, rows):
    return spark.createDataFrame(rows, ", ".join(f"{c} string" for c in COLUMNS))


def test_valid_rows_are_normalised(spark):
    raw_df = _raw(
        spark,
        [
            (" A1 ", "mugs ", "images/a1.jpg", "TRUE", "Blue mug", "2026-01-02 03:04:05"),
            ("A2", "mugs", "/cat/images/a2.jpg", "no", None, None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    expected_df = spark.createDataFrame(
        [
            (
                "A1",
                "mugs",
                "/cat/images/a1.jpg",
                "Blue mug",
                True,
                dt.datetime(2026, 1, 2, 3, 4, 5),
            ),
            ("A2", "mugs", "/cat/images/a2.jpg", None, False, None),
        ],
        "sku_id string, category string, image_uri string, title string, is_active boolean, "
        "updated_at timestamp",
    )
    assert_df_equality(catalog_df, expected_df, ignore_row_order=True, ignore_nullable=True)
    assert rejects_df.count() == 0


def test_every_bad_row_is_rejected_with_its_reason(spark):
    raw_df = _raw(
        spark,
        [
            (None, "mugs", "a.jpg", "true", None, None),
            ("  ", "mugs", "a.jpg", "true", None, None),
            ("D", "mugs", "d1.jpg", "true", None, None),
            ("D", "mugs", "d2.jpg", "true", None, None),
            ("C", "", "c.jpg", "true", None, None),
            ("N", None, "n.jpg", "true", None, None),
            ("U", "mugs", None, "true", None, None),
            ("X", "mugs", "../../../etc/passwd", "true", None, None),
            ("Y", "mugs", "images/../../outside.jpg", "true", None, None),
            ("Z", "mugs", "/etc/passwd", "true", None, None),
            ("P", "mugs", "/cat-evil/p.jpg", "true", None, None),
            ("I", "mugs", "i.jpg", "maybe", None, None),
            ("J", "mugs", "j.jpg", None, None, None),
            ("T", "mugs", "t.jpg", "true", None, "yesterday"),
            ("OK", "mugs", "images/ok.jpg", "1", "<script>alert(1)</script>", None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    got = sorted(
        (r.sku_id or "", r.reason) for r in rejects_df.select("sku_id", "reason").collect()
    )
    assert got == sorted(
        [
            ("", "missing_sku_id"),
            ("", "missing_sku_id"),
            ("D", "duplicate_sku_id"),
            ("D", "duplicate_sku_id"),
            ("C", "missing_category"),
            ("N", "missing_category"),
            ("U", "missing_image_uri"),
            ("X", "image_outside_roots"),
            ("Y", "image_outside_roots"),
            ("Z", "image_outside_roots"),
            ("P", "image_outside_roots"),
            ("I", "invalid_is_active"),
            ("J", "invalid_is_active"),
            ("T", "invalid_updated_at"),
        ]
    )
    assert [r.sku_id for r in catalog_df.collect()] == ["OK"]
    # Nothing silently dropped: every input row is in exactly one output.
    assert catalog_df.count() + rejects_df.count() == raw_df.count()
    rejects = {r.sku_id: r for r in rejects_df.collect()}
    assert "2 times" in rejects["D"].detail
    assert "/etc/passwd" in rejects["X"].detail
    assert "maybe" in rejects["I"].detail
    # The raw row travels with the reject, for whoever fixes the feed.
    assert '"image_uri":"../../../etc/passwd"' in rejects["X"].record
    assert rejects_df.filter(F.col("run_id") != "r1").count() == 0
    assert rejects_df.filter(F.col("stage") != "ingest").count() == 0


def test_image_roots_are_configurable(spark):
    raw_df = _raw(
        spark,
        [
            ("A", "mugs", "/photos/a.jpg", "true", None, None),
            ("B", "mugs", "images/b.jpg", "true", None, None),
            ("S", "mugs", "s3://bucket/img/s.jpg", "true", None, None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir="/cat", image_roots=["/photos", "s3://bucket/img"]
    )
    assert sorted(r.sku_id for r in catalog_df.collect()) == ["A", "S"]
    assert [(r.sku_id, r.reason) for r in rejects_df.collect()] == [("B", "image_outside_roots")]


def test_csv_with_quoted_multiline_titles(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text(
        "sku_id,category,image_uri,title,is_active\n"
        'A,mugs,a.jpg,"Mug, blue ""large""\nsecond line",true\n'
        "B,mugs,b.jpg,,false\n"
    )
    raw_df = read_catalog(spark, str(path))
    rows = {r.sku_id: r for r in raw_df.collect()}
    assert rows["A"].title == 'Mug, blue "large"\nsecond line'
    assert rows["B"].title is None
    assert rows["A"].updated_at is None  # optional column added when absent


def test_missing_required_column_is_an_error_naming_it(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("sku_id,category,title\nA,mugs,x\n")
    with pytest.raises(CatalogError, match="image_uri, is_active"):
        read_catalog(spark, str(path))


def test_missing_catalog_file_is_an_error_naming_it(spark, tmp_path):
    with pytest.raises(CatalogError, match="nope.csv"):
        read_catalog(spark, str(tmp_path / "nope.csv"))


def test_parquet_catalog_with_typed_columns(spark, tmp_path):
    # A user's Parquet file has real booleans and timestamps; ingest reads it like the CSV.
    import pandas as pd

    path = tmp_path / "catalog.parquet"
    pd.DataFrame(
        {
            "sku_id": ["A", "B"],
            "category": ["mugs", "mugs"],
            "image_uri": ["images/a.jpg", "images/b.jpg"],
            "title": ["Mug", None],
            "is_active": [True, False],
            "updated_at": pd.to_datetime(["2026-01-02 03:04:05", None]),
        }
    ).to_parquet(path)
    raw_df = read_catalog(spark, str(path))
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir=str(tmp_path), image_roots=[]
    )
    rows = {r.sku_id: r for r in catalog_df.collect()}
    assert rejects_df.count() == 0
    assert rows["A"].is_active is True and rows["B"].is_active is False
    assert rows["A"].updated_at == dt.datetime(2026, 1, 2, 3, 4, 5)
    assert rows["B"].updated_at is None
    assert rows["A"].image_uri == str(tmp_path / "images" / "a.jpg")
