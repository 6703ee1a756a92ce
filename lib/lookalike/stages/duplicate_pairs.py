"""Duplicate evidence: the pairs of listings that may show the same photo, and their scores.

``content_hash_pairs`` (the same bytes), ``phash_pairs`` (perceptual hashes a few bits apart,
found through a join on bands of the hash) and ``embedding_pairs`` (each SKU's nearest
neighbors in its category's index), confirmed by the duplicate descriptor
(``confirmed_by_descriptor``, and the thumbnails' alignment in the grey band). None of them
compares all pairs. The rules and their measured thresholds are in ``lookalike.stages.duplicates``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.core.ann import Shard
from lookalike.core.descriptor import similarities
from lookalike.core.thumbnails import alignment
from lookalike.stages.index import map_shard_pairs

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
def descriptor_similarity(a: pd.Series, b: pd.Series) -> pd.Series:
    """The similarity of two duplicate descriptors (``lookalike.core.descriptor.similarities``),
    null where either is. A pandas UDF: Spark's array functions would compute each of the
    four 1280-long view products, and the view count, once per reference."""
    values = similarities(list(a), list(b))
    return pd.Series(pd.array(values, dtype="Float32")).mask(np.isnan(values))


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
    a plain background share their low frequencies (measured on the first, drawn demo catalog:
    different products 4-6 bits apart at cosine 0.56-0.86), so a pair must also reach
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
        .withColumn("cosine", descriptor_similarity(F.col("va"), F.col("vb")))
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
    """The candidate pairs (nearest neighbors) whose duplicate descriptors are at least
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
