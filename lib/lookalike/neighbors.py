"""Neighbors: the top-K most similar SKUs of every active SKU, within its category.

Every pair of (sub-)shards of a category is queried where it is opened (one task per pair,
files memory-mapped): a SKU's vector, read from its own shard, asks every sub-shard of its
category, and Spark merges the answers by score, so the catalog's vectors never pass through
the driver. Self and inactive SKUs are removed; equal scores are ordered by sku_id, so the
answer is stable from run to run. Members of a SKU's own duplicate cluster are no
recommendation: the index is asked for enough extra neighbours to drop them and still
return K.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.index import Shard, map_shard_pairs

SIMILAR_ITEMS_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("similar_sku_id", T.StringType(), False),
        T.StructField("score", T.FloatType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)


def top_k_across(
    query_shard: Shard, target_shard: Shard, *, k: int, search_k: int, run_id: str
) -> pd.DataFrame:
    """similar_items rows of the active SKUs of ``query_shard``: their k best active SKUs of
    ``target_shard`` (another sub-shard of the category, or the same shard without self).
    Ranked within this pair; the stage merges the pairs of a category by score."""
    items = np.flatnonzero(query_shard.is_active)
    same = query_shard is target_shard or query_shard.shard_id == target_shard.shard_id
    columns: dict[str, list] = {name: [] for name in SIMILAR_ITEMS_SCHEMA.fieldNames()}
    for start in range(0, len(items), QUERY_BLOCK):
        block = items[start : start + QUERY_BLOCK]
        answers = target_shard.search(
            query_shard.item_vectors(block),
            k,
            search_k=search_k,
            active_only=True,
            exclude=block if same else None,
        )
        for item_id, (ids, scores) in zip(block, answers, strict=True):
            columns["sku_id"].extend([query_shard.sku_ids[item_id]] * len(ids))
            columns["rank"].extend(range(1, len(ids) + 1))
            columns["similar_sku_id"].extend(target_shard.sku_ids[ids])
            columns["score"].extend(scores)
    n = len(columns["sku_id"])
    columns["category"] = [query_shard.category] * n
    columns["model_id"] = [query_shard.model_id] * n
    columns["run_id"] = [run_id] * n
    # Typed even when empty: an empty list would become float64 and fail in Arrow.
    types = {"rank": "int32", "score": "float32"}
    return pd.DataFrame({c: pd.Series(v, dtype=types.get(c, object)) for c, v in columns.items()})


QUERY_BLOCK = 4096


def top_k_for_shard(shard: Shard, *, k: int, search_k: int, run_id: str) -> pd.DataFrame:
    """similar_items rows of a category held in one shard: every active SKU's k best."""
    return top_k_across(shard, shard, k=k, search_k=search_k, run_id=run_id)


def similar_items(manifest_df: DataFrame, *, k: int, search_k: int, run_id: str) -> DataFrame:
    """Candidate similar_items rows: up to k per SKU from each sub-shard of its category
    (one Spark task per pair of sub-shards). ``best_k`` / ``without_own_duplicates`` merge
    them into the final ranking."""
    return map_shard_pairs(
        manifest_df,
        lambda query, target: top_k_across(query, target, k=k, search_k=search_k, run_id=run_id),
        SIMILAR_ITEMS_SCHEMA,
    )


def by_score(partition: str) -> Window:
    """Best score first; equal (float32) scores in similar_sku_id order: a stable ranking."""
    return Window.partitionBy(partition).orderBy(F.col("score").desc(), F.col("similar_sku_id"))


def without_own_duplicates(similar_df: DataFrame, clusters_df: DataFrame, k: int) -> DataFrame:
    """``similar_df`` (candidates, possibly more than k per SKU and from several sub-shards)
    minus each SKU's own duplicate listings, ranked by score, at most k per SKU."""
    membership = clusters_df.select("sku_id", "cluster_id")
    return (
        similar_df.join(membership, "sku_id", "left")
        .join(
            membership.select(
                F.col("sku_id").alias("similar_sku_id"),
                F.col("cluster_id").alias("similar_cluster_id"),
            ),
            "similar_sku_id",
            "left",
        )
        .filter(
            F.col("cluster_id").isNull()
            | F.col("similar_cluster_id").isNull()
            | (F.col("cluster_id") != F.col("similar_cluster_id"))
        )
        .withColumn("rank", F.row_number().over(by_score("sku_id")).cast("int"))
        .filter(F.col("rank") <= k)
        .select(*SIMILAR_ITEMS_SCHEMA.fieldNames())
    )
