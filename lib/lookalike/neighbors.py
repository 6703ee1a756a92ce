"""Neighbors: the top-K most similar SKUs of every active SKU, within its category.

Every shard is queried where it is opened (one task per shard, files memory-mapped), so the
catalog's vectors never pass through the driver. Self and inactive SKUs are removed; equal
scores are ordered by sku_id, so the answer is stable from run to run. Members of a SKU's own
duplicate cluster are no recommendation: the index is asked for enough extra neighbours to
drop them and still return K.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.index import Shard, map_shards

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


def top_k_of_item(
    shard: Shard, item_id: int, k: int, search_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Item ids and scores of the k best active neighbours of one item, self excluded."""
    n_items = len(shard.sku_ids)
    n = min(n_items, 2 * (k + 1))
    while True:
        ids, scores = shard.neighbours(item_id, n, search_k)
        keep = (ids != item_id) & shard.is_active[ids]
        # Inactive neighbours are filtered after the search: ask for more until k remain.
        if keep.sum() >= k or n >= n_items:
            break
        n = min(n_items, 2 * n)
    # Ties are broken on the published (float32) score, so equal scores read in sku_id order.
    ids, scores = ids[keep], np.clip(scores[keep], -1.0, 1.0).astype(np.float32)
    order = np.lexsort((shard.sku_ids[ids], -scores))[:k]
    return ids[order], scores[order]


def top_k_for_shard(shard: Shard, *, k: int, search_k: int, run_id: str) -> pd.DataFrame:
    columns: dict[str, list] = {name: [] for name in SIMILAR_ITEMS_SCHEMA.fieldNames()}
    for item_id in np.flatnonzero(shard.is_active):
        ids, scores = top_k_of_item(shard, int(item_id), k, search_k)
        columns["sku_id"].extend([shard.sku_ids[item_id]] * len(ids))
        columns["rank"].extend(range(1, len(ids) + 1))
        columns["similar_sku_id"].extend(shard.sku_ids[ids])
        columns["score"].extend(scores)
    n = len(columns["sku_id"])
    columns["category"] = [shard.category] * n
    columns["model_id"] = [shard.model_id] * n
    columns["run_id"] = [run_id] * n
    # Typed even when empty: an empty list would become float64 and fail in Arrow.
    types = {"rank": "int32", "score": "float32"}
    return pd.DataFrame({c: pd.Series(v, dtype=types.get(c, object)) for c, v in columns.items()})


def similar_items(manifest_df: DataFrame, *, k: int, search_k: int, run_id: str) -> DataFrame:
    """similar_items rows (sku_id, rank, similar_sku_id, score, ...) for every shard."""
    return map_shards(
        manifest_df,
        lambda shard: top_k_for_shard(shard, k=k, search_k=search_k, run_id=run_id),
        SIMILAR_ITEMS_SCHEMA,
    )


def without_own_duplicates(similar_df: DataFrame, clusters_df: DataFrame, k: int) -> DataFrame:
    """``similar_df`` (ranked, possibly more than k per SKU) minus each SKU's own duplicate
    listings, re-ranked, at most k per SKU."""
    membership = clusters_df.select("sku_id", "cluster_id")
    by_rank = Window.partitionBy("sku_id").orderBy("rank")
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
        .withColumn("rank", F.row_number().over(by_rank).cast("int"))
        .filter(F.col("rank") <= k)
        .select(*SIMILAR_ITEMS_SCHEMA.fieldNames())
    )
