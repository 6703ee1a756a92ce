"""Duplicate clusters from pairs: connected components, evidence, the canonical listing."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from PIL import Image

from lookalike.core.perceptual import band_keys
from lookalike.core.thumbnails import thumbnail
from lookalike.stages.duplicate_pairs import (
    confirmed_by_descriptor,
    content_hash_pairs,
    merge_pairs,
    phash_band_keys,
    phash_pairs,
)
from lookalike.stages.duplicates import (
    CONFIRMED,
    NOT_DUPLICATE,
    apply_decisions,
    connected_components,
    duplicate_clusters,
    latest_decisions,
)
from lookalike.stages.neighbors import without_own_duplicates

pytestmark = pytest.mark.slow

PAIRS = "sku_id_a string, sku_id_b string, score float, evidence string"
EMBEDDINGS = (
    "sku_id string, content_hash string, embedding array<float>, phash long, phash_mirrored long"
)
CATALOG = "sku_id string, category string, is_active boolean, updated_at timestamp, title string"
DIM = 8


def _unit(*components: float) -> list[float]:
    v = np.zeros(DIM)
    v[: len(components)] = components
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))


def _embeddings(spark, rows):
    """rows: (sku_id, content_hash, vector, phash, phash_mirrored)."""
    return spark.createDataFrame(rows, EMBEDDINGS)


def _catalog(spark, skus, category="mugs"):
    return spark.createDataFrame(
        [(s, category, True, dt.datetime(2024, 1, 1), f"title {s}") for s in skus], CATALOG
    )


def _clusters(df) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for row in df.collect():
        groups.setdefault(row.cluster_id, set()).add(row.sku_id)
    return {frozenset(g) for g in groups.values()}


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
    # s5 and s6 have no hash (not embedded): no hash is not the same hash.
    expected_df = spark.createDataFrame(
        [("s1", "s2", 1.0, "content_hash"), ("s1", "s3", 1.0, "content_hash")], PAIRS
    )
    assert_df_equality(
        content_hash_pairs(embeddings_df), expected_df, ignore_row_order=True, ignore_nullable=True
    )


def test_merge_pairs_keeps_all_evidence_and_the_best_score(spark):
    a_df = spark.createDataFrame([("s1", "s2", 1.0, "content_hash")], PAIRS)
    b_df = spark.createDataFrame(
        [("s1", "s2", 0.99, "embedding"), ("s3", "s4", 0.96, "embedding")], PAIRS
    )
    expected_df = spark.createDataFrame(
        [("s1", "s2", 1.0, "content_hash,embedding"), ("s3", "s4", 0.96, "embedding")], PAIRS
    )
    assert_df_equality(
        merge_pairs(a_df, b_df), expected_df, ignore_row_order=True, ignore_nullable=True
    )


def test_canonical_listing_is_active_then_oldest_then_titled_then_smallest_id(spark):
    pairs_df = spark.createDataFrame(
        [
            ("a1", "a2", 0.97, "embedding"),
            ("a2", "a3", 1.0, "content_hash"),
            ("b1", "b2", 0.99, "embedding"),
            ("c1", "c2", 0.99, "embedding"),
        ],
        PAIRS,
    )
    catalog_df = spark.createDataFrame(
        [
            # a1 is the oldest but inactive; a3 is active and older than a2.
            ("a1", "mugs", False, dt.datetime(2020, 1, 1), "mug"),
            ("a2", "mugs", True, dt.datetime(2024, 1, 1), "mug"),
            ("a3", "mugs", True, dt.datetime(2023, 1, 1), "mug"),
            # Same age (unknown): the smallest sku_id.
            ("b2", "hats", True, None, "hat"),
            ("b1", "hats", True, None, "hat"),
            # Same age, c1 has no title: the more complete listing c2.
            ("c1", "hats", True, None, "  "),
            ("c2", "hats", True, None, "a hat"),
        ],
        CATALOG,
    )
    near = _unit(1, 0.1)
    embeddings_df = _embeddings(
        spark,
        [
            ("a1", "h1", _unit(1, 0.05), 1, 1),
            ("a2", "h2", near, 2, 2),
            ("a3", "h2", near, 2, 2),
            ("b1", "h4", _unit(0, 1), 3, 3),
            ("b2", "h5", _unit(0, 1, 0.1), 4, 4),
            ("c1", "h6", _unit(0, 0, 1), 5, 5),
            ("c2", "h7", _unit(0, 0, 1, 0.1), 6, 6),
        ],
    )
    rows = {
        r.sku_id: r
        for r in duplicate_clusters(
            pairs_df, catalog_df, embeddings_df, run_id="r1", chain_min_similarity=0.9
        ).collect()
    }
    assert set(rows) == {"a1", "a2", "a3", "b1", "b2", "c1", "c2"}
    assert {rows[s].canonical_sku_id for s in ("a1", "a2", "a3")} == {"a3"}
    assert {rows[s].canonical_sku_id for s in ("b1", "b2")} == {"b1"}
    assert {rows[s].canonical_sku_id for s in ("c1", "c2")} == {"c2"}
    assert sorted(s for s, r in rows.items() if r.is_canonical) == ["a3", "b1", "c2"]
    assert rows["a1"].cluster_id == rows["a2"].cluster_id != rows["b1"].cluster_id
    assert rows["a1"].evidence == "content_hash,embedding"
    # Scores are to the canonical listing: same bytes 1.0, otherwise the cosine.
    assert rows["a2"].score == pytest.approx(1.0)
    assert rows["a1"].score == pytest.approx(_cos(_unit(1, 0.05), near), abs=1e-5)
    assert rows["a1"].min_score == pytest.approx(rows["a1"].score)
    assert rows["b2"].evidence == "embedding"
    assert rows["b1"].run_id == "r1"


def test_a_chain_of_small_steps_does_not_join_far_apart_listings(spark):
    # a ~ b ~ c ~ d, each step cosine ~0.95, but a and d are far apart (cosine < 0.7).
    angles = np.radians([0, 18, 36, 54])
    vectors = {s: _unit(np.cos(t), np.sin(t)) for s, t in zip("abcd", angles, strict=True)}
    assert _cos(vectors["a"], vectors["d"]) < 0.7
    pairs_df = spark.createDataFrame(
        [(x, y, _cos(vectors[x], vectors[y]), "embedding") for x, y in ("ab", "bc", "cd")], PAIRS
    )
    embeddings_df = _embeddings(
        spark, [(s, f"h-{s}", v, i, i) for i, (s, v) in enumerate(vectors.items())]
    )
    clusters_df = duplicate_clusters(
        pairs_df, _catalog(spark, "abcd"), embeddings_df, run_id="r", chain_min_similarity=0.9
    )
    clusters = _clusters(clusters_df)
    # Plain connected components would give one cluster {a, b, c, d}.
    assert not any({"a", "d"} <= c for c in clusters)
    assert not any({"a", "c"} <= c for c in clusters)
    # a (canonical: smallest id) keeps b; c and d, detached, form their own cluster.
    assert clusters == {frozenset("ab"), frozenset("cd")}
    for row in clusters_df.collect():
        canonical = vectors[row.canonical_sku_id]
        assert _cos(vectors[row.sku_id], canonical) >= 0.9


def test_phash_band_keys_in_spark_equal_the_library(spark):
    rng = np.random.default_rng(3)
    hashes = [int(h) for h in rng.integers(-(2**63), 2**63 - 1, 50, dtype=np.int64)]
    hashes += [-1, 0, 2**63 - 1, -(2**63)]
    df = spark.createDataFrame([(h,) for h in hashes], "phash long")
    got = [list(r.keys) for r in df.select(phash_band_keys("phash").alias("keys")).collect()]
    assert got == [band_keys(h, 4) for h in hashes]


def test_phash_pairs_find_close_hashes_mirrored_too_and_need_a_similar_vector(spark):
    base = 0x5A5A_1234_F0F0_0FF0
    flip = lambda h, *bits: sum(1 << b for b in bits) ^ h  # noqa: E731
    signed = lambda h: h - 2**64 if h >= 2**63 else h  # noqa: E731
    v = _unit(1, 0.2)
    rows = [
        ("orig", "h1", v, signed(base), signed(~base & (2**64 - 1))),
        # 5 bits off in 3 of the 4 bands: a re-encoded copy.
        ("copy", "h2", _unit(1, 0.25), signed(flip(base, 1, 2, 20, 40, 41)), 0),
        # Its pHash equals the original's mirrored hash: a mirrored copy.
        ("mirror", "h3", _unit(1, 0.3), signed(~base & (2**64 - 1)), signed(base)),
        # Close hash, different product: the vector says no.
        ("lookalike", "h4", _unit(0, 1), signed(flip(base, 3, 50)), 0),
        ("far", "h5", v, signed(flip(base, *range(0, 64, 3))), 0),
    ]
    pairs_df = phash_pairs(
        _embeddings(spark, rows), max_distance=6, max_bucket=100, min_similarity=0.9
    )
    pairs = pairs_df.collect()
    found = {(r.sku_id_a, r.sku_id_b): r for r in pairs}
    expected_df = spark.createDataFrame(
        [("copy", "orig", "phash"), ("mirror", "orig", "phash"), ("copy", "mirror", "phash")],
        "sku_id_a string, sku_id_b string, evidence string",
    )
    assert_df_equality(
        pairs_df.select("sku_id_a", "sku_id_b", "evidence"),
        expected_df,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert all(r.evidence == "phash" for r in pairs)
    assert found[("copy", "orig")].score == pytest.approx(_cos(rows[0][2], rows[1][2]), abs=1e-5)


def test_phash_pairs_skip_a_crowded_band_instead_of_comparing_all_of_it(spark):
    # 30 blank placeholders with one hash: a bucket of 30 > max_bucket 10 makes no pairs.
    v = _unit(1)
    rows = [(f"blank{i:02d}", f"h{i}", v, -1, -1) for i in range(30)]
    df = _embeddings(spark, rows)
    assert phash_pairs(df, max_distance=0, max_bucket=10, min_similarity=0.5).count() == 0
    assert phash_pairs(df, max_distance=0, max_bucket=100, min_similarity=0.5).count() == 435


def test_reviews_drop_not_duplicate_pairs_and_keep_confirmed_ones(spark):
    pairs_df = spark.createDataFrame(
        [("a", "b", 0.97, "embedding"), ("c", "d", 0.96, "embedding")], PAIRS
    )
    reviews_df = spark.createDataFrame(
        [
            # Typed either way round; the latest decision counts.
            ("b", "a", CONFIRMED, "ann", dt.datetime(2026, 1, 1)),
            ("a", "b", NOT_DUPLICATE, "bob", dt.datetime(2026, 2, 1)),
            ("e", "f", CONFIRMED, "ann", dt.datetime(2026, 1, 1)),
            ("c", "d", "maybe", "eve", dt.datetime(2026, 3, 1)),  # not a decision
        ],
        "sku_id_a string, sku_id_b string, decision string, reviewer string, decided_at timestamp",
    )
    decisions_df = latest_decisions(reviews_df)
    expected_df = spark.createDataFrame(
        [("c", "d", 0.96, "embedding"), ("e", "f", 1.0, "review")], PAIRS
    )
    assert_df_equality(
        apply_decisions(pairs_df, decisions_df),
        expected_df,
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_similar_items_leave_out_the_skus_own_duplicates(spark):
    similar_df = spark.createDataFrame(
        [
            ("a", 1, "a-copy", 0.99, "mugs", "m", "r"),
            ("a", 2, "b", 0.9, "mugs", "m", "r"),
            ("a", 3, "c", 0.8, "mugs", "m", "r"),
            ("b", 1, "a", 0.9, "mugs", "m", "r"),
            ("b", 2, "a-copy", 0.89, "mugs", "m", "r"),
        ],
        "sku_id string, rank int, similar_sku_id string, score float, category string, "
        "model_id string, run_id string",
    )
    clusters_df = spark.createDataFrame(
        [("dup-1", "a"), ("dup-1", "a-copy")], "cluster_id string, sku_id string"
    )
    # a's copy is gone and the ranks close up; b keeps both (a and a-copy are not its own);
    # every row is the listing's own category's.
    expected_df = spark.createDataFrame(
        [
            ("a", 1, "b", 0.9, "mugs", "m", "r", "category"),
            ("a", 2, "c", 0.8, "mugs", "m", "r", "category"),
            ("b", 1, "a", 0.9, "mugs", "m", "r", "category"),
            ("b", 2, "a-copy", 0.89, "mugs", "m", "r", "category"),
        ],
        "sku_id string, rank int, similar_sku_id string, score float, category string, "
        "model_id string, run_id string, source string",
    )
    assert_df_equality(
        without_own_duplicates(similar_df, clusters_df, k=2),
        expected_df,
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_neighbor_candidates_are_confirmed_on_the_duplicate_descriptor(spark):
    """Candidates come from the embedding; the R-MAC descriptor decides and gives the score.
    b and c are both close neighbors of a; only b's descriptor says it is the same photo."""
    rows = [
        ("a", _unit(1, 0.1), _unit(1, 0)),
        ("b", _unit(1, 0.2), _unit(1, 0.2)),  # a cropped copy: descriptors 0.98 alike
        ("c", _unit(1, 0.15), _unit(1, 0.6)),  # another shirt: descriptors 0.86 alike
    ]
    embeddings_df = spark.createDataFrame(
        [(s, f"h{s}", v, r, None, None) for s, v, r in rows],
        "sku_id string, content_hash string, embedding array<float>, rmac array<float>, "
        "phash long, phash_mirrored long",
    )
    candidates_df = spark.createDataFrame(
        [("a", "b", 0.99, "embedding"), ("a", "c", 0.99, "embedding")], PAIRS
    )
    confirmed = confirmed_by_descriptor(candidates_df, embeddings_df, min_similarity=0.94)
    expected_df = spark.createDataFrame(
        [("a", "b", _cos(rows[0][2], rows[1][2]), "embedding")], PAIRS
    )
    assert_approx_df_equality(confirmed, expected_df, 1e-6, ignore_nullable=True)
    # Embeddings without descriptors (synthetic ones) are compared on the vector itself.
    plain_df = embeddings_df.drop("rmac")
    plain = confirmed_by_descriptor(candidates_df, plain_df, min_similarity=0.94)
    expected_df = spark.createDataFrame(
        [
            ("a", "b", _cos(rows[0][1], rows[1][1]), "embedding"),
            ("a", "c", _cos(rows[0][1], rows[2][1]), "embedding"),
        ],
        PAIRS,
    )
    assert_approx_df_equality(plain, expected_df, 1e-6, ignore_row_order=True, ignore_nullable=True)


def _texture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize(
        (480, 480), Image.Resampling.BICUBIC
    )


def test_pairs_of_the_grey_band_are_duplicates_when_their_thumbnails_line_up(spark):
    """Descriptors between aligned_min_similarity and min_similarity settle nothing alone:
    the pair is a duplicate (evidence ``aligned``, the descriptors' score) when one thumbnail
    is a crop of the other, not when the thumbnails differ or one is missing (a row of an
    earlier run). Pairs above min_similarity need no thumbnail; pairs below the band are out."""
    texture = _texture(1)
    crop = thumbnail(texture.crop((40, 10, 440, 420)))
    rows = [
        # sku, descriptor, thumbnail
        ("a", _unit(1, 0), thumbnail(texture)),
        ("b", _unit(1, 0.4), crop),  # 0.93 alike: in the band, lines up with a
        ("c", _unit(1, 0.4), thumbnail(_texture(2))),  # in the band, another texture
        ("d", _unit(1, 0.4), None),  # in the band, no thumbnail
        ("e", _unit(1, 0.2), None),  # 0.98 alike: above min_similarity
        ("f", _unit(1, 0.6), crop),  # 0.86 alike: below the band
    ]
    embeddings_df = spark.createDataFrame(
        [(s, f"h{s}", r, r, t) for s, r, t in rows],
        "sku_id string, content_hash string, embedding array<float>, rmac array<float>, "
        "thumbnail binary",
    )
    candidates_df = spark.createDataFrame([("a", s, 0.9, "embedding") for s in "bcdef"], PAIRS)
    confirmed = confirmed_by_descriptor(
        candidates_df,
        embeddings_df,
        min_similarity=0.95,
        aligned_min_similarity=0.9,
        aligned_min_correlation=0.8,
    )
    expected_df = spark.createDataFrame(
        [
            ("a", "b", _cos(rows[0][1], rows[1][1]), "aligned"),
            ("a", "e", _cos(rows[0][1], rows[4][1]), "embedding"),
        ],
        PAIRS,
    )
    assert_approx_df_equality(
        confirmed, expected_df, 1e-6, ignore_row_order=True, ignore_nullable=True
    )
    # Without the band (or without thumbnails) the descriptor alone decides.
    for df, band in [(embeddings_df, None), (embeddings_df.drop("thumbnail"), 0.9)]:
        alone = confirmed_by_descriptor(
            candidates_df, df, min_similarity=0.95, aligned_min_similarity=band
        )
        expected_df = spark.createDataFrame(
            [("a", "e", _cos(rows[0][1], rows[4][1]), "embedding")], PAIRS
        )
        assert_approx_df_equality(alone, expected_df, 1e-6, ignore_nullable=True)
    with pytest.raises(ValueError, match="must be below min_similarity"):
        confirmed_by_descriptor(
            candidates_df, embeddings_df, min_similarity=0.95, aligned_min_similarity=0.95
        )
