"""Duplicate clusters from pairs: connected components, evidence, the canonical listing."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality

from lookalike.duplicates import (
    connected_components,
    content_hash_pairs,
    duplicate_clusters,
    merge_pairs,
)

pytestmark = pytest.mark.slow

PAIRS = "sku_id_a string, sku_id_b string, score float, evidence string"


def test_connected_components_joins_chains_and_keeps_groups_apart(spark):
    pairs_df = spark.createDataFrame(
        [
            ("a", "b", 0.99, "embedding"),
            ("b", "c", 0.98, "embedding"),
            ("c", "d", 0.97, "embedding"),  # a chain of four: one component
            ("x", "y", 1.0, "content_hash"),
            ("m", "z", 0.96, "embedding"),
            ("k", "z", 0.96, "embedding"),  # a star through z
        ],
        PAIRS,
    )
    expected_df = spark.createDataFrame(
        [
            ("a", "a"),
            ("b", "a"),
            ("c", "a"),
            ("d", "a"),
            ("x", "x"),
            ("y", "x"),
            ("k", "k"),
            ("m", "k"),
            ("z", "k"),
        ],
        "sku_id string, component string",
    )
    assert_df_equality(
        connected_components(pairs_df), expected_df, ignore_row_order=True, ignore_nullable=True
    )


def test_connected_components_of_no_pairs_is_empty(spark):
    assert connected_components(spark.createDataFrame([], PAIRS)).count() == 0


def test_content_hash_pairs_link_every_copy_to_the_first(spark):
    embeddings_df = spark.createDataFrame(
        [("s1", "h1"), ("s3", "h1"), ("s2", "h1"), ("s4", "h2"), ("s5", None), ("s6", None)],
        "sku_id string, content_hash string",
    )
    got = sorted(tuple(r) for r in content_hash_pairs(embeddings_df).collect())
    # s5 and s6 have no hash (not embedded): no hash is not the same hash.
    assert got == [("s1", "s2", 1.0, "content_hash"), ("s1", "s3", 1.0, "content_hash")]


def test_merge_pairs_keeps_all_evidence_and_the_best_score(spark):
    a_df = spark.createDataFrame([("s1", "s2", 1.0, "content_hash")], PAIRS)
    b_df = spark.createDataFrame(
        [("s1", "s2", 0.99, "embedding"), ("s3", "s4", 0.96, "embedding")], PAIRS
    )
    got = sorted(tuple(r) for r in merge_pairs(a_df, b_df).collect())
    assert got == [
        ("s1", "s2", 1.0, "content_hash,embedding"),
        ("s3", "s4", pytest.approx(0.96), "embedding"),
    ]


def test_canonical_listing_is_active_then_oldest_then_smallest_id(spark):
    pairs_df = spark.createDataFrame(
        [
            ("a1", "a2", 0.97, "embedding"),
            ("a2", "a3", 1.0, "content_hash"),
            ("b1", "b2", 0.99, "embedding"),
        ],
        PAIRS,
    )
    catalog_df = spark.createDataFrame(
        [
            # a1 is the oldest but inactive; a3 is active and older than a2.
            ("a1", "mugs", False, dt.datetime(2020, 1, 1)),
            ("a2", "mugs", True, dt.datetime(2024, 1, 1)),
            ("a3", "mugs", True, dt.datetime(2023, 1, 1)),
            # Same age (unknown): the smallest sku_id.
            ("b2", "hats", True, None),
            ("b1", "hats", True, None),
        ],
        "sku_id string, category string, is_active boolean, updated_at timestamp",
    )
    rows = {r.sku_id: r for r in duplicate_clusters(pairs_df, catalog_df, run_id="r1").collect()}
    assert set(rows) == {"a1", "a2", "a3", "b1", "b2"}
    assert {rows[s].canonical_sku_id for s in ("a1", "a2", "a3")} == {"a3"}
    assert {rows[s].canonical_sku_id for s in ("b1", "b2")} == {"b1"}
    assert [s for s, r in rows.items() if r.is_canonical] in (["a3", "b1"], ["b1", "a3"])
    assert rows["a1"].cluster_id == rows["a2"].cluster_id != rows["b1"].cluster_id
    assert rows["a1"].evidence == "content_hash,embedding"
    assert rows["a1"].min_score == pytest.approx(0.97)
    assert rows["b2"].evidence == "embedding"
    assert rows["b1"].run_id == "r1"
