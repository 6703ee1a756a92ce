"""Duplicates: clusters of listings that show the same product photo.

Evidence, each found without comparing all pairs:
- ``content_hash``: byte-identical image files (grouped by hash, across categories);
- ``phash``: perceptual hashes at most ``phash_max_distance`` bits apart, the photo's or its
  mirror image's (candidates from a join on 16-bit bands of the hash, across categories),
  confirmed by a descriptor similarity of at least ``phash_min_similarity``;
- ``embedding``: among each SKU's nearest neighbours in its category's index with a cosine
  of at least ``candidate_min_similarity``, those whose duplicate descriptors reach
  ``min_similarity`` (re-encoded, resized, cropped, padded, watermarked copies);
- ``aligned``: those candidates whose descriptors fall short of ``min_similarity`` but reach
  ``aligned_min_similarity``, when the pair's grey thumbnails line up
  (``lookalike.core.thumbnails``: a crop of the original found by searching window sizes and
  positions).

The *duplicate descriptor* is the R-MAC vector stored beside each embedding (regional max
pooling of the same forward pass, ``lookalike.core.backbones.rmac``): cropped and padded copies
stay closer to their original in it than in the average-pooled vector that similar items use,
while other photos of the same product type do not (``benchmarks/duplicates_quality.py``:
recall 0.845 -> 0.922, precision 1.000 -> 0.994). Embeddings without it (synthetic ones) use the
vector itself.
Merchandisers' decisions in ``duplicate_reviews`` come last: a pair marked ``not_duplicate``
is dropped, a ``confirmed`` pair is kept whatever the evidence says tonight.

*Shared photos* come first: one image (the same bytes, or the same pixels re-encoded) shown
by at least ``shared_photo_min_listings`` listings that differ (more than one category, or
distinct titles for at least ``shared_photo_min_title_share`` of them) is a placeholder, a
logo or a blank, not a product photographed once: those listings have no photo of their own.
They are written apart (``shared_photos``) and take no part in any pair, so they neither form
a cluster nor pull other listings into one.

Accepted pairs are joined into clusters by connected components, computed with Spark joins,
with a guard against chaining: every member must be close to its cluster's canonical listing
(same bytes, cosine at least ``chain_min_similarity``, or a ``confirmed`` review) and not
marked ``not_duplicate`` with it; members that are not are detached and clustered again
among themselves. The canonical listing: active first,
then the oldest (``updated_at``), then the one with a title, then the smallest sku_id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.core.descriptor import similarities
from lookalike.core.thumbnails import alignment
from lookalike.index import Shard, map_shard_pairs

PAIR_SCHEMA = T.StructType(
    [
        T.StructField("sku_id_a", T.StringType(), False),
        T.StructField("sku_id_b", T.StringType(), False),
        T.StructField("score", T.FloatType(), False),
        T.StructField("evidence", T.StringType(), False),
    ]
)


def near_duplicate_pairs_across(
    query_shard: Shard,
    target_shard: Shard,
    *,
    min_similarity: float,
    candidates: int,
    search_k: int,
) -> pd.DataFrame:
    """Pairs (a < b) of a SKU of ``query_shard`` and one of its ``candidates`` nearest SKUs
    of ``target_shard`` (another sub-shard of the category, or the same shard) at least
    min_similarity apart. Each pair may come from both sides: ``merge_pairs`` keeps one."""
    same = query_shard is target_shard or query_shard.shard_id == target_shard.shard_id
    pairs: dict[tuple[str, str], float] = {}
    n_items = len(query_shard)
    for start in range(0, n_items, QUERY_BLOCK):
        block = np.arange(start, min(n_items, start + QUERY_BLOCK))
        answers = target_shard.search(
            query_shard.item_vectors(block),
            candidates,
            search_k=search_k,
            exclude=block if same else None,
        )
        for item_id, (ids, scores) in zip(block, answers, strict=True):
            for other, score in zip(ids, scores, strict=True):
                if score < min_similarity:
                    continue
                a, b = sorted((query_shard.sku_ids[item_id], target_shard.sku_ids[other]))
                pairs[(a, b)] = max(pairs.get((a, b), -1.0), float(score))
    return pd.DataFrame(
        {
            # Typed even when empty: an empty list would become float64 and fail in Arrow.
            "sku_id_a": pd.Series([a for a, _ in pairs], dtype=object),
            "sku_id_b": pd.Series([b for _, b in pairs], dtype=object),
            "score": np.clip(np.array(list(pairs.values()), np.float32), -1.0, 1.0),
            "evidence": pd.Series(["embedding"] * len(pairs), dtype=object),
        }
    )


QUERY_BLOCK = 4096


def near_duplicate_pairs_of_shard(
    shard: Shard, *, min_similarity: float, candidates: int, search_k: int
) -> pd.DataFrame:
    """Pairs (a < b) of one shard whose vectors are at least min_similarity apart."""
    return near_duplicate_pairs_across(
        shard, shard, min_similarity=min_similarity, candidates=candidates, search_k=search_k
    )


def embedding_pairs(
    manifest_df: DataFrame, *, min_similarity: float, candidates: int, search_k: int
) -> DataFrame:
    """Near-duplicate pairs within each category, across its sub-shards too."""
    return map_shard_pairs(
        manifest_df,
        lambda query, target: near_duplicate_pairs_across(
            query,
            target,
            min_similarity=min_similarity,
            candidates=candidates,
            search_k=search_k,
        ),
        PAIR_SCHEMA,
    )


def content_hash_pairs(embeddings_df: DataFrame) -> DataFrame:
    """Each copy of a file paired with the smallest sku_id holding the same bytes."""
    same_bytes = Window.partitionBy("content_hash")
    return (
        embeddings_df.filter(F.col("content_hash").isNotNull())
        .withColumn("first_sku_id", F.min("sku_id").over(same_bytes))
        .filter(F.col("sku_id") != F.col("first_sku_id"))
        .select(
            F.col("first_sku_id").alias("sku_id_a"),
            F.col("sku_id").alias("sku_id_b"),
            F.lit(1.0).cast("float").alias("score"),
            F.lit("content_hash").alias("evidence"),
        )
    )


def merge_pairs(*pairs_dfs: DataFrame) -> DataFrame:
    """One row per pair, with every kind of evidence that found it and the best score."""
    union_df = pairs_dfs[0]
    for df in pairs_dfs[1:]:
        union_df = union_df.unionByName(df)
    return union_df.groupBy("sku_id_a", "sku_id_b").agg(
        F.max("score").alias("score"),
        F.array_join(F.array_sort(F.collect_set("evidence")), ",").alias("evidence"),
    )


def connected_components(pairs_df: DataFrame, max_iterations: int = 100) -> DataFrame:
    """(sku_id, component): component is the smallest sku_id reachable through the pairs.

    Min-label propagation with DataFrame joins: each round, a node takes the smallest label
    among itself and its neighbours. Rounds grow with a cluster's diameter, which is small
    for duplicate listings; the lineage is cut every round.
    """
    edges_df = (
        pairs_df.select(F.col("sku_id_a").alias("src"), F.col("sku_id_b").alias("dst"))
        .unionByName(
            pairs_df.select(F.col("sku_id_b").alias("src"), F.col("sku_id_a").alias("dst"))
        )
        .distinct()
        .localCheckpoint()
    )
    labels_df = (
        edges_df.groupBy("src")
        .agg(F.least(F.min("dst"), F.first("src")).alias("label"))
        .withColumnRenamed("src", "sku_id")
        .localCheckpoint()
    )
    for _ in range(max_iterations):
        proposed_df = (
            edges_df.join(labels_df, edges_df.dst == labels_df.sku_id)
            .groupBy("src")
            .agg(F.min("label").alias("proposed"))
        )
        updated_df = (
            labels_df.join(proposed_df, labels_df.sku_id == proposed_df.src, "left")
            .select(
                "sku_id",
                F.least("label", F.coalesce("proposed", "label")).alias("label"),
                (F.coalesce("proposed", "label") < F.col("label")).alias("changed"),
            )
            .localCheckpoint()
        )
        labels_df = updated_df.select("sku_id", "label")
        if updated_df.filter("changed").isEmpty():
            return labels_df.withColumnRenamed("label", "component")
    raise RuntimeError(f"connected components did not converge in {max_iterations} rounds")


def cluster_id_of(component: F.Column) -> F.Column:
    """A stable id: a hash of the cluster's smallest sku_id."""
    return F.concat(F.lit("dup-"), F.substring(F.sha1(component), 1, 12))


PHASH_BANDS = 4  # 16-bit bands: two hashes less than 4 bits apart always share one


def phash_band_keys(phash: F.Column) -> F.Column:
    """The ``perceptual.band_keys(h, 4)`` of a LongType column, as Spark expressions."""
    width = 64 // PHASH_BANDS
    return F.array(
        *[
            F.shiftrightunsigned(phash, 64 - width * (i + 1))
            .bitwiseAND(F.lit((1 << width) - 1))
            .bitwiseOR(F.lit(i << 56))
            for i in range(PHASH_BANDS)
        ]
    )


def hamming(a: F.Column, b: F.Column) -> F.Column:
    return F.bit_count(a.bitwiseXOR(b))


def phash_pairs(
    embeddings_df: DataFrame, *, max_distance: int, max_bucket: int, min_similarity: float
) -> DataFrame:
    """Pairs whose photos' pHashes (or one's and the other's mirror image's) are close.

    Candidates share one 16-bit band of the hash (a join, never all pairs); a band value held
    by more than ``max_bucket`` photos (blank or placeholder images) is skipped rather than
    made into max_bucket^2 candidates. Close hashes alone are not enough: product shots on
    a plain background share their low frequencies (measured on the demo catalogue: different
    products 4-6 bits apart at cosine 0.56-0.86), so a pair must also reach
    ``min_similarity`` in cosine, which is its score.
    """
    hashed = embeddings_df.filter(F.col("phash").isNotNull())
    probes = hashed.select(
        "sku_id", F.col("phash").alias("h"), F.explode(phash_band_keys("phash")).alias("key")
    )
    targets = hashed.select(
        F.col("sku_id").alias("other"),
        F.explode(F.array(F.col("phash"), F.col("phash_mirrored"))).alias("other_h"),
    ).select("other", "other_h", F.explode(phash_band_keys("other_h")).alias("key"))
    crowded = targets.groupBy("key").count().filter(F.col("count") > max_bucket).select("key")
    candidates = (
        probes.join(targets.join(crowded, "key", "left_anti"), "key")
        .filter(F.col("sku_id") != F.col("other"))
        .select(
            F.least("sku_id", "other").alias("sku_id_a"),
            F.greatest("sku_id", "other").alias("sku_id_b"),
            hamming(F.col("h"), F.col("other_h")).alias("distance"),
        )
        .filter(F.col("distance") <= max_distance)
        .select("sku_id_a", "sku_id_b")
        .distinct()
    )
    return (
        with_cosine(candidates, embeddings_df)
        .filter(F.col("cosine") >= min_similarity)
        .select(
            "sku_id_a",
            "sku_id_b",
            F.col("cosine").cast("float").alias("score"),
            F.lit("phash").alias("evidence"),
        )
    )


def descriptor_column(embeddings_df: DataFrame) -> str:
    """The column pairs are compared on: the R-MAC duplicate descriptor, where stored."""
    return "rmac" if "rmac" in embeddings_df.columns else "embedding"


def with_cosine(pairs_df: DataFrame, embeddings_df: DataFrame) -> DataFrame:
    """Pairs with the similarity of their duplicate descriptors (``cosine``: the best cosine
    over the descriptors' views, ``_similarity``); only the descriptors of SKUs in a pair move."""
    skus = (
        pairs_df.select(F.col("sku_id_a").alias("sku_id"))
        .union(pairs_df.select(F.col("sku_id_b").alias("sku_id")))
        .distinct()
    )
    column = descriptor_column(embeddings_df)
    vectors = embeddings_df.select("sku_id", F.col(column).alias("v")).join(
        skus, "sku_id", "left_semi"
    )
    return (
        pairs_df.join(
            vectors.select(F.col("sku_id").alias("sku_id_a"), F.col("v").alias("va")),
            "sku_id_a",
        )
        .join(
            vectors.select(F.col("sku_id").alias("sku_id_b"), F.col("v").alias("vb")),
            "sku_id_b",
        )
        .withColumn("cosine", _similarity(F.col("va"), F.col("vb")))
        .drop("va", "vb")
    )


def confirmed_by_descriptor(
    candidates_df: DataFrame,
    embeddings_df: DataFrame,
    *,
    min_similarity: float,
    aligned_min_similarity: float | None = None,
    aligned_min_correlation: float = 1.0,
) -> DataFrame:
    """The candidate pairs (nearest neighbours) whose duplicate descriptors are at least
    ``min_similarity`` alike (their evidence as it comes), and those of the grey band from
    ``aligned_min_similarity`` up whose thumbnails line up to at least
    ``aligned_min_correlation`` (evidence ``aligned``, ``lookalike.core.thumbnails.alignment``).
    The descriptors' similarity is the score either way. Without an ``aligned_min_similarity``
    or a ``thumbnail`` column (synthetic embeddings) there is no band; a pair missing a
    thumbnail (rows of an earlier run) is settled by ``min_similarity`` alone."""
    band = aligned_min_similarity is not None and "thumbnail" in embeddings_df.columns
    if band and aligned_min_similarity >= min_similarity:
        raise ValueError(
            f"aligned_min_similarity {aligned_min_similarity} must be below "
            f"min_similarity {min_similarity}: it is where the band of undecided pairs starts"
        )
    pairs_df = with_cosine(
        candidates_df.select("sku_id_a", "sku_id_b", "evidence"), embeddings_df
    ).filter(F.col("cosine") >= (aligned_min_similarity if band else min_similarity))
    if band:
        # Only the thumbnails of SKUs in the band's pairs move; the UDF aligns those pairs
        # alone (once a row: it is marked nondeterministic, so the optimiser never copies it).
        undecided = F.col("cosine") < min_similarity
        thumbs = embeddings_df.select("sku_id", "thumbnail")
        pairs_df = (
            pairs_df.withColumn("undecided", undecided)
            .join(
                thumbs.select(F.col("sku_id").alias("sku_id_a"), F.col("thumbnail").alias("ta")),
                "sku_id_a",
                "left",
            )
            .join(
                thumbs.select(F.col("sku_id").alias("sku_id_b"), F.col("thumbnail").alias("tb")),
                "sku_id_b",
                "left",
            )
            .withColumn("alignment", _alignment(F.col("ta"), F.col("tb"), F.col("undecided")))
            .filter(~F.col("undecided") | (F.col("alignment") >= aligned_min_correlation))
            .withColumn(
                "evidence", F.when(F.col("undecided"), "aligned").otherwise(F.col("evidence"))
            )
        )
    return pairs_df.select(
        "sku_id_a", "sku_id_b", F.col("cosine").cast("float").alias("score"), "evidence"
    )


# --- shared photos (placeholders) ------------------------------------------------------------


def normalised_title(title: F.Column) -> F.Column:
    """Lower case, every run of characters other than letters and digits one space, trimmed;
    '' for no title. "Blue Shirt!" and "blue  shirt" are one title, "Blue shirt (2)" another."""
    return F.trim(F.regexp_replace(F.lower(F.coalesce(title, F.lit(""))), r"[^\p{L}\p{N}]+", " "))


def photo_groups(
    embeddings_df: DataFrame, *, max_distance: int, max_bucket: int, min_similarity: float
) -> DataFrame:
    """(sku_id, content_hash, group_key): each embedded listing with the image it shows.

    Listings share a group when their files have the same bytes (``content_hash``), or when a
    file is the same picture re-encoded: pHashes at most ``max_distance`` bits apart (a flat
    placeholder saved as JPEG moves 2-4 bits even at quality 95) and duplicate descriptors at
    least ``min_similarity`` alike, compared per distinct file with ``phash_pairs``. A file
    joins the most used file it is that close to (a star, so a series of small differences
    never chains); the group's key is that file's hash.
    """
    column = descriptor_column(embeddings_df)
    listings_df = embeddings_df.filter(F.col("content_hash").isNotNull())
    # One row per distinct file: a placeholder on 100,000 listings is one row here.
    files_df = (
        listings_df.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("content_hash")))
        .withColumn(
            "nth", F.row_number().over(Window.partitionBy("content_hash").orderBy("sku_id"))
        )
        .filter("nth = 1")
        .select(F.col("content_hash").alias("sku_id"), "n", "phash", "phash_mirrored", column)
        .localCheckpoint()
    )
    near_df = phash_pairs(
        files_df, max_distance=max_distance, max_bucket=max_bucket, min_similarity=min_similarity
    )
    sizes_df = files_df.select(F.col("sku_id").alias("other"), "n")
    links_df = (
        near_df.select(F.col("sku_id_a").alias("file"), F.col("sku_id_b").alias("other"))
        .unionByName(
            near_df.select(F.col("sku_id_b").alias("file"), F.col("sku_id_a").alias("other"))
        )
        .unionByName(files_df.select(F.col("sku_id").alias("file"), F.col("sku_id").alias("other")))
        .join(sizes_df, "other")
    )
    most_used_first = Window.partitionBy("file").orderBy(F.col("n").desc(), "other")
    keys_df = (
        links_df.withColumn("nth", F.row_number().over(most_used_first))
        .filter("nth = 1")
        .select(F.col("file").alias("content_hash"), F.col("other").alias("group_key"))
    )
    return listings_df.join(keys_df, "content_hash").select("sku_id", "content_hash", "group_key")


def photo_group_features(
    groups_df: DataFrame, catalog_df: DataFrame, *, min_listings: int = 2
) -> DataFrame:
    """One row per group of at least ``min_listings`` listings: ``group_key, n_listings,
    n_categories, n_titles`` (distinct non-empty normalised titles)."""
    sizes_df = (
        groups_df.groupBy("group_key")
        .agg(F.count(F.lit(1)).alias("n_listings"))
        .filter(F.col("n_listings") >= min_listings)
    )
    title = normalised_title(F.col("title"))
    return (
        groups_df.join(sizes_df.select("group_key"), "group_key")
        .join(catalog_df.select("sku_id", "category", "title"), "sku_id")
        .groupBy("group_key")
        .agg(
            F.count(F.lit(1)).alias("n_listings"),
            F.countDistinct("category").alias("n_categories"),
            # countDistinct skips NULL: a listing without a title is no distinct title.
            F.countDistinct(F.when(title != "", title)).alias("n_titles"),
        )
    )


def is_shared_photo(
    n_listings: F.Column,
    n_categories: F.Column,
    n_titles: F.Column,
    *,
    min_listings: int,
    min_title_share: float,
) -> F.Column:
    """The rule: a group this large whose listings differ, in category or in title, shows no
    one product. A seller's copies of one listing keep (nearly) one title in one category."""
    return (n_listings >= min_listings) & (
        (n_categories > 1) | (n_titles >= F.lit(min_title_share) * n_listings)
    )


def shared_photos(
    embeddings_df: DataFrame,
    catalog_df: DataFrame,
    *,
    run_id: str,
    min_listings: int,
    min_title_share: float,
    min_similarity: float,
    max_distance: int,
    max_bucket: int,
) -> DataFrame:
    """shared_photos rows: one per listing showing an image that many different listings
    show (SHARED_PHOTOS_SCHEMA). ``max_distance`` and ``max_bucket`` are the pHash search's
    (``phash_pairs``); ``min_similarity`` the descriptor similarity of a re-encoded copy."""
    groups_df = photo_groups(
        embeddings_df,
        max_distance=max_distance,
        max_bucket=max_bucket,
        min_similarity=min_similarity,
    )
    shared_df = photo_group_features(groups_df, catalog_df, min_listings=min_listings).filter(
        is_shared_photo(
            F.col("n_listings"),
            F.col("n_categories"),
            F.col("n_titles"),
            min_listings=min_listings,
            min_title_share=min_title_share,
        )
    )
    return (
        groups_df.join(shared_df, "group_key")
        .join(catalog_df.select("sku_id", "category", "image_uri"), "sku_id")
        .select(
            "sku_id",
            "category",
            "image_uri",
            "content_hash",
            F.col("n_listings").cast("int").alias("n_listings"),
            F.col("n_categories").cast("int").alias("n_categories"),
            F.col("n_titles").cast("int").alias("n_titles"),
            F.concat(F.lit("photo-"), F.substring(F.sha1("group_key"), 1, 12)).alias("group_id"),
            F.lit(run_id).alias("run_id"),
        )
    )


SHARED_PHOTOS_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("image_uri", T.StringType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("n_listings", T.IntegerType()),
        T.StructField("n_categories", T.IntegerType()),
        T.StructField("n_titles", T.IntegerType()),
        T.StructField("group_id", T.StringType()),
        T.StructField("run_id", T.StringType()),
    ]
)


def without_shared_photos(df: DataFrame, shared_df: DataFrame) -> DataFrame:
    """``df`` (pairs: sku_id_a, sku_id_b; or listings: sku_id) without the listings of
    ``shared_df``: a placeholder is evidence of nothing."""
    skus_df = shared_df.select("sku_id").distinct()
    if "sku_id_a" not in df.columns:
        return df.join(skus_df, "sku_id", "left_anti")
    return df.join(skus_df.withColumnRenamed("sku_id", "sku_id_a"), "sku_id_a", "left_anti").join(
        skus_df.withColumnRenamed("sku_id", "sku_id_b"), "sku_id_b", "left_anti"
    )


# --- merchandisers' decisions ----------------------------------------------------------------

REVIEWS_SCHEMA = T.StructType(
    [
        T.StructField("sku_id_a", T.StringType(), False),
        T.StructField("sku_id_b", T.StringType(), False),
        T.StructField("decision", T.StringType(), False),
        T.StructField("reviewer", T.StringType(), True),
        T.StructField("decided_at", T.TimestampType(), False),
    ]
)
NOT_DUPLICATE = "not_duplicate"
CONFIRMED = "confirmed"
DECISIONS = (NOT_DUPLICATE, CONFIRMED)


def latest_decisions(reviews_df: DataFrame) -> DataFrame:
    """(sku_id_a < sku_id_b, decision): each pair's latest review, whichever way it was typed."""
    latest_first = Window.partitionBy("sku_id_a", "sku_id_b").orderBy(F.col("decided_at").desc())
    return (
        reviews_df.filter(F.col("decision").isin(*DECISIONS))
        .select(
            F.least("sku_id_a", "sku_id_b").alias("sku_id_a"),
            F.greatest("sku_id_a", "sku_id_b").alias("sku_id_b"),
            "decision",
            "decided_at",
        )
        .withColumn("n", F.row_number().over(latest_first))
        .filter("n = 1")
        .select("sku_id_a", "sku_id_b", "decision")
    )


def apply_decisions(pairs_df: DataFrame, decisions_df: DataFrame) -> DataFrame:
    """Accepted pairs: the evidence's, minus pairs marked not_duplicate, plus confirmed ones."""
    rejected = decisions_df.filter(F.col("decision") == NOT_DUPLICATE).select(
        "sku_id_a", "sku_id_b"
    )
    confirmed = decisions_df.filter(F.col("decision") == CONFIRMED).select(
        "sku_id_a",
        "sku_id_b",
        F.lit(1.0).cast("float").alias("score"),
        F.lit("review").alias("evidence"),
    )
    kept = pairs_df.join(rejected, ["sku_id_a", "sku_id_b"], "left_anti")
    return merge_pairs(kept, confirmed)


def _align_rows(a: pd.Series, b: pd.Series, wanted: pd.Series) -> pd.Series:
    """How well two thumbnails line up (``lookalike.core.thumbnails.alignment``) where a row is
    wanted and both are present; null elsewhere."""
    values = [
        alignment(x, y) if want and x is not None and y is not None else None
        for x, y, want in zip(a, b, wanted, strict=True)
    ]
    return pd.Series(pd.array(values, dtype="Float32"))


_alignment = F.pandas_udf(_align_rows, T.FloatType()).asNondeterministic()


@F.pandas_udf(T.FloatType())
def _similarity(a: pd.Series, b: pd.Series) -> pd.Series:
    """The similarity of two duplicate descriptors (``lookalike.core.descriptor.similarities``),
    null where either is. A pandas UDF: Spark's array functions would compute each of the
    four 1280-long view products, and the view count, once per reference."""
    values = similarities(list(a), list(b))
    return pd.Series(pd.array(values, dtype="Float32")).mask(np.isnan(values))


def _with_canonical(components_df: DataFrame, catalog_df: DataFrame) -> DataFrame:
    """Components with each one's canonical listing (the documented rule) and category."""
    canonical_first = Window.partitionBy("component").orderBy(
        F.col("is_active").desc(),
        F.col("updated_at").asc_nulls_last(),
        F.col("has_title").desc(),
        F.col("sku_id").asc(),
    )
    listings = catalog_df.select(
        "sku_id",
        "category",
        "is_active",
        "updated_at",
        (F.coalesce(F.length(F.trim("title")), F.lit(0)) > 0).alias("has_title"),
    )
    return (
        components_df.join(listings, "sku_id")
        .withColumn("canonical_sku_id", F.first("sku_id").over(canonical_first))
        .select("sku_id", "component", "canonical_sku_id", "category")
    )


def _closeness_to_canonical(
    members_df: DataFrame, embeddings_df: DataFrame, decisions_df: DataFrame
) -> DataFrame:
    """Members with how close each is to its canonical listing: same bytes, cosine, pHash
    distance (direct or mirrored), and any review of the (member, canonical) pair."""
    features = embeddings_df.select(
        "sku_id",
        "content_hash",
        F.col(descriptor_column(embeddings_df)).alias("descriptor"),
        "phash",
        "phash_mirrored",
    ).join(F.broadcast(members_df.select("sku_id")), "sku_id")
    canonical = features.select([F.col(c).alias(f"c_{c}") for c in features.columns])
    pair_a = F.least("sku_id", "canonical_sku_id")
    pair_b = F.greatest("sku_id", "canonical_sku_id")
    reviews = decisions_df.select(
        F.col("sku_id_a").alias("r_a"), F.col("sku_id_b").alias("r_b"), "decision"
    )
    return (
        members_df.join(features, "sku_id", "left")
        .join(canonical, F.col("canonical_sku_id") == F.col("c_sku_id"), "left")
        .join(reviews, (pair_a == F.col("r_a")) & (pair_b == F.col("r_b")), "left")
        .select(
            "sku_id",
            "component",
            "canonical_sku_id",
            "category",
            (F.col("content_hash") == F.col("c_content_hash")).alias("same_bytes"),
            _similarity(F.col("descriptor"), F.col("c_descriptor")).alias("cosine"),
            F.least(
                hamming(F.col("phash"), F.col("c_phash")),
                hamming(F.col("phash"), F.col("c_phash_mirrored")),
            ).alias("phash_distance"),
            F.col("decision"),
        )
    )


def duplicate_clusters(
    pairs_df: DataFrame,
    catalog_df: DataFrame,
    embeddings_df: DataFrame,
    *,
    run_id: str,
    chain_min_similarity: float,
    decisions_df: DataFrame | None = None,
    max_rounds: int = 5,
) -> DataFrame:
    """duplicate_clusters rows: one per listing in a cluster, with its canonical listing.

    ``pairs_df`` are the accepted pairs (after ``apply_decisions``). Each round clusters the
    remaining pairs, keeps the members close to their canonical listing, and sends the
    others (with the pairs among them) to the next round: a chain A~B~C with A far from C
    never puts A and C in one cluster.
    """
    spark = pairs_df.sparkSession
    if decisions_df is None:
        decisions_df = spark.createDataFrame(
            [], "sku_id_a string, sku_id_b string, decision string"
        )
    remaining_df = pairs_df
    kept_parts: list[DataFrame] = []
    for _ in range(max_rounds):
        components_df = connected_components(remaining_df)
        if components_df.isEmpty():
            break
        members_df = _closeness_to_canonical(
            _with_canonical(components_df, catalog_df), embeddings_df, decisions_df
        )
        close = (F.col("sku_id") == F.col("canonical_sku_id")) | (
            F.coalesce(F.col("decision"), F.lit("")) != NOT_DUPLICATE
        ) & (
            F.coalesce(F.col("decision") == CONFIRMED, F.lit(False))
            | F.coalesce(F.col("same_bytes"), F.lit(False))
            | (F.coalesce(F.col("cosine"), F.lit(-1.0)) >= chain_min_similarity)
        )
        # NULL (no review, no vector) must read as "not close", never drop the member.
        members_df = members_df.withColumn(
            "close", F.coalesce(close, F.lit(False))
        ).localCheckpoint()
        # A canonical listing left alone is no cluster.
        kept_df = members_df.filter("close").withColumn(
            "size", F.count(F.lit(1)).over(Window.partitionBy("component"))
        )
        kept_parts.append(kept_df.filter(F.col("size") > 1).drop("size", "close", "decision"))
        detached_df = members_df.filter(~F.col("close")).select("sku_id")
        remaining_df = remaining_df.join(
            detached_df.withColumnRenamed("sku_id", "sku_id_a"), "sku_id_a", "left_semi"
        ).join(detached_df.withColumnRenamed("sku_id", "sku_id_b"), "sku_id_b", "left_semi")
        remaining_df = remaining_df.localCheckpoint()
        if remaining_df.isEmpty():
            break
    if not kept_parts:
        return spark.createDataFrame([], CLUSTERS_SCHEMA)
    members_df = kept_parts[0]
    for part in kept_parts[1:]:
        members_df = members_df.unionByName(part)
    members_df = members_df.withColumn(
        "score",
        F.when(F.col("sku_id") == F.col("canonical_sku_id"), F.lit(1.0))
        .when(F.col("same_bytes"), F.lit(1.0))
        .otherwise(F.col("cosine")),
    )
    # The evidence of a cluster: the kinds of the accepted pairs inside it.
    in_cluster = members_df.select(F.col("sku_id").alias("m_sku"), F.col("component").alias("m_c"))
    evidence_df = (
        pairs_df.join(in_cluster, pairs_df.sku_id_a == in_cluster.m_sku)
        .join(
            in_cluster.select(F.col("m_sku").alias("m_sku_b"), F.col("m_c").alias("m_c_b")),
            (F.col("sku_id_b") == F.col("m_sku_b")) & (F.col("m_c") == F.col("m_c_b")),
        )
        .groupBy(F.col("m_c").alias("component"))
        .agg(
            F.array_join(
                F.array_sort(F.array_distinct(F.flatten(F.collect_list(F.split("evidence", ","))))),
                ",",
            ).alias("evidence")
        )
    )
    confidence = Window.partitionBy("component")
    return (
        members_df.join(evidence_df, "component", "left")
        .withColumn(
            "min_score",
            F.min(F.when(F.col("sku_id") != F.col("canonical_sku_id"), F.col("score"))).over(
                confidence
            ),
        )
        .select(
            cluster_id_of(F.col("component")).alias("cluster_id"),
            "sku_id",
            "canonical_sku_id",
            (F.col("sku_id") == F.col("canonical_sku_id")).alias("is_canonical"),
            "category",
            F.coalesce("evidence", F.lit("")).alias("evidence"),
            F.col("score").cast("float").alias("score"),
            F.col("phash_distance").cast("int").alias("phash_distance"),
            F.col("min_score").cast("float").alias("min_score"),
            F.lit(run_id).alias("run_id"),
        )
    )


CLUSTERS_SCHEMA = T.StructType(
    [
        T.StructField("cluster_id", T.StringType()),
        T.StructField("sku_id", T.StringType()),
        T.StructField("canonical_sku_id", T.StringType()),
        T.StructField("is_canonical", T.BooleanType()),
        T.StructField("category", T.StringType()),
        T.StructField("evidence", T.StringType()),
        T.StructField("score", T.FloatType()),
        T.StructField("phash_distance", T.IntegerType()),
        T.StructField("min_score", T.FloatType()),
        T.StructField("run_id", T.StringType()),
    ]
)
