"""Duplicates: clusters of listings that show the same product photo.

Evidence, each found without comparing all pairs:
- ``content_hash``: byte-identical image files (grouped by hash, across categories);
- ``embedding``: cosine similarity at or above ``min_similarity`` among each SKU's nearest
  neighbours in its category's index (re-encoded, resized, watermarked copies).
Accepted pairs are joined into clusters by connected components, computed with Spark joins.
Each cluster names one canonical listing: active first, then the oldest (``updated_at``),
then the smallest sku_id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.index import Shard, map_shards

PAIR_SCHEMA = T.StructType(
    [
        T.StructField("sku_id_a", T.StringType(), False),
        T.StructField("sku_id_b", T.StringType(), False),
        T.StructField("score", T.FloatType(), False),
        T.StructField("evidence", T.StringType(), False),
    ]
)


def near_duplicate_pairs_of_shard(
    shard: Shard, *, min_similarity: float, candidates: int, search_k: int
) -> pd.DataFrame:
    """Pairs (a < b) of one shard whose vectors are at least min_similarity apart."""
    n_items = len(shard.sku_ids)
    pairs: dict[tuple[str, str], float] = {}
    for item_id in range(n_items):
        ids, scores = shard.neighbours(item_id, min(n_items, candidates + 1), search_k)
        for other, score in zip(ids, scores, strict=True):
            if other == item_id or score < min_similarity:
                continue
            a, b = sorted((shard.sku_ids[item_id], shard.sku_ids[other]))
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


def embedding_pairs(
    manifest_df: DataFrame, *, min_similarity: float, candidates: int, search_k: int
) -> DataFrame:
    return map_shards(
        manifest_df,
        lambda shard: near_duplicate_pairs_of_shard(
            shard, min_similarity=min_similarity, candidates=candidates, search_k=search_k
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


def duplicate_clusters(pairs_df: DataFrame, catalog_df: DataFrame, *, run_id: str) -> DataFrame:
    """duplicate_clusters rows: one per listing in a cluster, with its canonical listing."""
    components_df = connected_components(pairs_df)
    cluster_stats_df = (
        pairs_df.join(components_df, pairs_df.sku_id_a == components_df.sku_id)
        .groupBy("component")
        .agg(
            F.min("score").alias("min_score"),
            F.array_join(
                F.array_sort(F.array_distinct(F.flatten(F.collect_list(F.split("evidence", ","))))),
                ",",
            ).alias("evidence"),
        )
    )
    canonical_first = Window.partitionBy("component").orderBy(
        F.col("is_active").desc(), F.col("updated_at").asc_nulls_last(), F.col("sku_id").asc()
    )
    return (
        components_df.join(
            catalog_df.select("sku_id", "category", "is_active", "updated_at"), "sku_id"
        )
        .withColumn("canonical_sku_id", F.first("sku_id").over(canonical_first))
        .join(cluster_stats_df, "component")
        .select(
            cluster_id_of(F.col("component")).alias("cluster_id"),
            "sku_id",
            "canonical_sku_id",
            (F.col("sku_id") == F.col("canonical_sku_id")).alias("is_canonical"),
            "category",
            "evidence",
            F.col("min_score").cast("float").alias("min_score"),
            F.lit(run_id).alias("run_id"),
        )
    )
