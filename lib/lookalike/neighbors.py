"""Neighbors: the top-K most similar SKUs of every active SKU, within its category.

Every pair of (sub-)shards of a category is queried where it is opened (one task per pair,
files memory-mapped): a SKU's vector, read from its own shard, asks every sub-shard of its
category, and Spark merges the answers by score, so the catalog's vectors never pass through
the driver. Self and inactive SKUs are removed; equal scores are ordered by sku_id, so the
answer is stable from run to run.

A row shows each product once: members of the SKU's own duplicate cluster are left out, and
of any other cluster only one listing is kept (its canonical listing where that is a
candidate, else the best-scoring member). Listings without a photo of their own (one image
shared by many listings: a placeholder) get no similar items and are nobody's similar item.

With an optional ``category_path`` (``Women > Dresses > Maxi``), a category too small to fill
K borrows from the categories under its parent, then its grandparent, ...: only its own
(few) listings ask those categories' shards, and each row's ``source`` says where it came
from (``category`` or the ancestor path), own-category rows first.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.core.storage import Location
from lookalike.index import Shard, map_shard_pairs

# The value of ``source`` for a listing of the SKU's own category.
OWN_CATEGORY = "category"
# Levels of a category_path: "Women > Dresses > Maxi" (spaces around ">" optional in input).
PATH_SEPARATOR = " > "

SIMILAR_ITEMS_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("similar_sku_id", T.StringType(), False),
        T.StructField("score", T.FloatType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("run_id", T.StringType(), False),
        # Last, so readers of the earlier columns are unaffected: "category", or the ancestor
        # path the similar item was borrowed from.
        T.StructField("source", T.StringType(), False),
    ]
)

QUERY_BLOCK = 4096
# A cluster can waste places in a row (see extra_for_clusters); never ask for more than
# this many extra neighbours per shard.
MAX_EXTRA_NEIGHBOURS = 200


def top_k_across(
    query_shard: Shard,
    target_shard: Shard,
    *,
    k: int,
    search_k: int,
    run_id: str,
    source: str = OWN_CATEGORY,
) -> pd.DataFrame:
    """similar_items rows of the active SKUs of ``query_shard``: their k best active SKUs of
    ``target_shard`` (another sub-shard of the category, the same shard without self, or a
    shard of a related category when ``source`` names the ancestor borrowed from). Ranked
    within this pair; the stage merges the pairs of a SKU by score."""
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
    columns["source"] = [source] * n
    # Typed even when empty: an empty list would become float64 and fail in Arrow.
    types = {"rank": "int32", "score": "float32"}
    return pd.DataFrame({c: pd.Series(v, dtype=types.get(c, object)) for c, v in columns.items()})


def top_k_for_shard(shard: Shard, *, k: int, search_k: int, run_id: str) -> pd.DataFrame:
    """similar_items rows of a category held in one shard: every active SKU's k best."""
    return top_k_across(shard, shard, k=k, search_k=search_k, run_id=run_id)


# --- listings without a photo of their own ---------------------------------------------------


def hidden_sku_ids(shared_photos: str | None, category: str) -> np.ndarray:
    """sku_ids of a category's listings without a photo of their own, read on the executor
    from the ``shared_photos`` Parquet folder (None: there are none)."""
    if shared_photos is None:
        return np.empty(0, dtype=object)
    filesystem, path = Location.of(shared_photos).arrow()
    table = ds.dataset(path, filesystem=filesystem, format="parquet").to_table(
        columns=["sku_id"], filter=pc.field("category") == category
    )
    return table.column("sku_id").to_numpy(zero_copy_only=False)


def without_hidden(shard: Shard, hidden: np.ndarray) -> Shard:
    """The shard with ``hidden`` listings treated as inactive: they ask nothing and are
    never an answer (the search masks them, so a row still fills up from the others)."""
    if not len(hidden):
        return shard
    return dataclasses.replace(shard, is_active=shard.is_active & ~np.isin(shard.sku_ids, hidden))


def similar_items(
    manifest_df: DataFrame,
    *,
    k: int,
    search_k: int,
    extra: dict[str, int] | None = None,
    run_id: str,
    pairs: list[tuple[dict, dict]] | None = None,
    sources: dict[tuple[str, str], str] | None = None,
    shared_photos: str | None = None,
) -> DataFrame:
    """Candidate similar_items rows: up to k per SKU from each target shard (one Spark task per
    pair of shards). By default the pairs are the sub-shards of each category; ``pairs`` and
    ``sources`` (``(query shard_id, target shard_id) -> source``) name others (borrowing).
    ``extra`` adds neighbours per target category (see ``extra_for_clusters``).
    ``best_k`` merges the candidates into the final ranking."""
    sources, extra = sources or {}, extra or {}

    def query(source_shard: Shard, target_shard: Shard) -> pd.DataFrame:
        hidden = hidden_sku_ids(shared_photos, source_shard.category)
        source_shard = without_hidden(source_shard, hidden)
        if target_shard.shard_id == source_shard.shard_id:
            target_shard = source_shard
        else:
            if target_shard.category != source_shard.category:
                hidden = hidden_sku_ids(shared_photos, target_shard.category)
            target_shard = without_hidden(target_shard, hidden)
        return top_k_across(
            source_shard,
            target_shard,
            k=k + extra.get(target_shard.category, 0),
            search_k=search_k,
            run_id=run_id,
            source=sources.get((source_shard.shard_id, target_shard.shard_id), OWN_CATEGORY),
        )

    return map_shard_pairs(manifest_df, query, SIMILAR_ITEMS_SCHEMA, pairs=pairs)


# --- one listing per product, ranking --------------------------------------------------------


def borrowed_first_key(source: Column) -> list[Column]:
    """Sort keys: own category first, then the nearest ancestor (the longest path)."""
    return [
        (source != F.lit(OWN_CATEGORY)).asc(),
        F.size(F.split(source, PATH_SEPARATOR, -1)).desc(),
    ]


def ranking(partition: str) -> Window:
    """Own category first, then borrowed rows nearest ancestor first; within each, best
    score first and equal (float32) scores in similar_sku_id order: a stable ranking."""
    return Window.partitionBy(partition).orderBy(
        *borrowed_first_key(F.col("source")), F.col("score").desc(), F.col("similar_sku_id")
    )


def by_score(partition: str) -> Window:
    """Best score first; equal (float32) scores in similar_sku_id order: a stable ranking."""
    return Window.partitionBy(partition).orderBy(F.col("score").desc(), F.col("similar_sku_id"))


def _with_source(similar_df: DataFrame) -> DataFrame:
    if "source" in similar_df.columns:
        return similar_df
    return similar_df.withColumn("source", F.lit(OWN_CATEGORY))


def _memberships(clusters_df: DataFrame) -> DataFrame:
    """(sku_id, cluster_id, canonical_sku_id): canonical null where not given."""
    canonical = (
        F.col("canonical_sku_id")
        if "canonical_sku_id" in clusters_df.columns
        else F.lit(None).cast("string")
    )
    return clusters_df.select("sku_id", "cluster_id", canonical.alias("canonical_sku_id"))


def without_own_duplicates(similar_df: DataFrame, clusters_df: DataFrame, k: int) -> DataFrame:
    """``similar_df`` (candidates, possibly more than k per SKU and from several shards) minus
    each SKU's own duplicate listings, ranked (own category first, then score), at most k
    per SKU."""
    membership = _memberships(clusters_df).select("sku_id", "cluster_id")
    return (
        _with_source(similar_df)
        .join(membership, "sku_id", "left")
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
        .withColumn("rank", F.row_number().over(ranking("sku_id")).cast("int"))
        .filter(F.col("rank") <= k)
        .select(*SIMILAR_ITEMS_SCHEMA.fieldNames())
    )


def filter_repeated_products(similar_df: DataFrame, clusters_df: DataFrame) -> DataFrame:
    """At most one listing of each duplicate cluster per SKU: the cluster's canonical listing
    where it is among the candidates, else its best candidate (own category first, score,
    similar_sku_id). Candidates outside clusters pass unchanged."""
    membership = _memberships(clusters_df).select(
        F.col("sku_id").alias("similar_sku_id"),
        F.col("cluster_id").alias("similar_cluster_id"),
        (F.col("sku_id") == F.col("canonical_sku_id")).alias("is_canonical_candidate"),
    )
    # The same candidate can come twice (two sub-shards never overlap, but stay safe).
    per_product = Window.partitionBy("sku_id", "product_key").orderBy(
        F.col("is_canonical_candidate").desc(),
        *borrowed_first_key(F.col("source")),
        F.col("score").desc(),
        F.col("similar_sku_id"),
    )
    return (
        _with_source(similar_df)
        .join(membership, "similar_sku_id", "left")
        .withColumn("product_key", F.coalesce("similar_cluster_id", "similar_sku_id"))
        .withColumn("is_canonical_candidate", F.coalesce("is_canonical_candidate", F.lit(False)))
        .withColumn("product_rank", F.row_number().over(per_product))
        .filter(F.col("product_rank") == 1)
        .drop("similar_cluster_id", "is_canonical_candidate", "product_key", "product_rank")
    )


def best_k(similar_df: DataFrame, clusters_df: DataFrame, k: int) -> DataFrame:
    """The published rows: candidates merged per SKU, each product once (own duplicates out,
    one listing per other cluster), own category first, at most k per SKU."""
    return without_own_duplicates(filter_repeated_products(similar_df, clusters_df), clusters_df, k)


# --- how many neighbours to ask, and from where ------------------------------------------------


def category_paths(catalog_df: DataFrame) -> DataFrame:
    """(category, category_path): one path per category, its levels trimmed and joined by
    " > " ("Women>Dresses> Maxi" -> "Women > Dresses > Maxi"); the most frequent path of
    the category's listings (ties: the smallest), so listings that disagree do not split it.
    Empty when the catalog has no category_path column."""
    if "category_path" not in catalog_df.columns:
        return catalog_df.sparkSession.createDataFrame([], "category string, category_path string")
    levels = F.filter(
        F.transform(F.split(F.col("category_path"), ">"), lambda level: F.trim(level)),
        lambda level: level != "",
    )
    counted_df = (
        catalog_df.select("category", F.array_join(levels, PATH_SEPARATOR).alias("category_path"))
        .filter(F.col("category_path").isNotNull() & (F.col("category_path") != ""))
        .groupBy("category", "category_path")
        .count()
    )
    most_frequent = Window.partitionBy("category").orderBy(
        F.col("count").desc(), F.col("category_path")
    )
    return (
        counted_df.withColumn("n", F.row_number().over(most_frequent))
        .filter(F.col("n") == 1)
        .select("category", "category_path")
    )


def eligible_listings(
    embeddings_df: DataFrame, clusters_df: DataFrame, shared_photos_df: DataFrame | None
) -> DataFrame:
    """Listings that can give and get similar items: active, embedded, with a photo of their
    own; ``product_key`` is their duplicate cluster (or themselves): one product each."""
    listings_df = embeddings_df.filter(F.col("is_active")).select("sku_id", "category")
    if shared_photos_df is not None:
        listings_df = listings_df.join(shared_photos_df.select("sku_id"), "sku_id", "left_anti")
    membership = clusters_df.select("sku_id", "cluster_id")
    return listings_df.join(membership, "sku_id", "left").withColumn(
        "product_key", F.coalesce(F.col("cluster_id"), F.col("sku_id"))
    )


def extra_for_clusters(largest: int, redundant: int, k: int) -> int:
    """Extra neighbours to ask of a category so that K distinct products remain: each of the
    K products kept can bring its other cluster members along (largest - 1 places each), the
    SKU's own cluster as many again (+1 when the SKU borrows from another category), and
    never more than the category's redundant listings (members beyond one per cluster) + 1."""
    if largest <= 1:
        return 0
    return min((k + 1) * (largest - 1) + 1, redundant + 1, MAX_EXTRA_NEIGHBOURS)


@dataclasses.dataclass(frozen=True)
class CategoryPlan:
    """What the neighbors stage needs per category (one row per category on the driver)."""

    category: str
    products: int  # distinct products among the eligible listings
    extra: int  # extra neighbours asked of its shards (clusters)
    path: tuple[str, ...] | None  # category_path levels, None without


def plan_categories(
    eligible_df: DataFrame, paths_df: DataFrame, k: int
) -> tuple[dict[str, CategoryPlan], dict[str, int]]:
    """Per category (products, extra neighbours, path) and products per ancestor path:
    Spark aggregates, one row per category and per ancestor to the driver."""
    per_cluster = (
        eligible_df.filter(F.col("cluster_id").isNotNull())
        .groupBy("category", "cluster_id")
        .count()
        .groupBy("category")
        .agg(F.max("count").alias("largest"), F.sum(F.col("count") - 1).alias("redundant"))
    )
    rows = (
        eligible_df.groupBy("category")
        .agg(F.count_distinct("product_key").alias("products"))
        .join(per_cluster, "category", "left")
        .join(paths_df, "category", "left")
        .collect()
    )
    plans = {
        r["category"]: CategoryPlan(
            r["category"],
            int(r["products"]),
            extra_for_clusters(int(r["largest"] or 1), int(r["redundant"] or 0), k),
            tuple(r["category_path"].split(PATH_SEPARATOR)) if r["category_path"] else None,
        )
        for r in rows
    }
    ancestors_df = (
        eligible_df.join(paths_df, "category")
        .withColumn("levels", F.split("category_path", PATH_SEPARATOR, -1))
        .select(
            "product_key",
            F.explode(
                F.transform(
                    F.sequence(F.lit(1), F.size("levels")),
                    lambda n: F.array_join(F.slice("levels", 1, n), PATH_SEPARATOR),
                )
            ).alias("ancestor"),
        )
        .groupBy("ancestor")
        .agg(F.count_distinct("product_key").alias("products"))
    )
    products_under = {r["ancestor"]: int(r["products"]) for r in ancestors_df.collect()}
    return plans, products_under


def _is_under(path: tuple[str, ...], ancestor: tuple[str, ...]) -> bool:
    return path[: len(ancestor)] == ancestor


def borrowing_targets(
    plans: dict[str, CategoryPlan], products_under: dict[str, int], k: int
) -> dict[str, dict[str, str]]:
    """{category: {target category: source}} for the categories that cannot fill K
    themselves: the categories under their nearest ancestor that holds K other products (or
    the top level when none does), each named by the nearest ancestor the two share."""
    borrowing: dict[str, dict[str, str]] = {}
    for plan in plans.values():
        if plan.path is None or len(plan.path) < 2 or plan.products - 1 >= k:
            continue
        ancestors = [plan.path[:n] for n in range(len(plan.path) - 1, 0, -1)]
        chosen = next(
            (a for a in ancestors if products_under.get(PATH_SEPARATOR.join(a), 0) - 1 >= k),
            ancestors[-1],
        )
        targets = {}
        for other in plans.values():
            if other.category == plan.category or other.path is None:
                continue
            if not _is_under(other.path, chosen):
                continue
            shared = next(a for a in ancestors if _is_under(other.path, a))
            targets[other.category] = PATH_SEPARATOR.join(shared)
        if targets:
            borrowing[plan.category] = targets
    return borrowing


def borrowing_pairs(
    manifest_df: DataFrame, borrowing: dict[str, dict[str, str]]
) -> tuple[list[tuple[dict, dict]], dict[tuple[str, str], str]]:
    """(query shard, target shard) pairs for the borrowing categories, and each pair's source:
    manifest rows only."""
    by_category: dict[str, list[dict]] = {}
    for row in manifest_df.collect():
        by_category.setdefault(row["category"], []).append(row.asDict())
    pairs, sources = [], {}
    for category, targets in sorted(borrowing.items()):
        for query in by_category.get(category, []):
            for target_category, source in sorted(targets.items()):
                for target in by_category.get(target_category, []):
                    pairs.append((query, target))
                    sources[(query["shard_id"], target["shard_id"])] = source
    return pairs, sources
