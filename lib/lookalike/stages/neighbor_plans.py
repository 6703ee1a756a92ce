"""Plans of the neighbors stage: how many neighbors each category asks for, and from where.

A category's clusters and item groups (variants of one product) take places in its SKUs'
answers (``extra_for_clusters``); a category
too small for K borrows from its relatives under a common ``category_path``
(``borrowing_targets``, ``borrowing_pairs``). One row per category reaches the driver.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from lookalike.stages.common import read

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

# Levels of a category_path: "Women > Dresses > Maxi" (spaces around ">" optional in input).
PATH_SEPARATOR = " > "
# A cluster can waste places in a row (see extra_for_clusters); never ask for more than
# this many extra neighbors per shard.
MAX_EXTRA_NEIGHBORS = 200


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
    embeddings_df: DataFrame,
    clusters_df: DataFrame,
    shared_photos_df: DataFrame | None,
    groups_df: DataFrame | None = None,
) -> DataFrame:
    """Listings that can give and get similar items: active, embedded, with a photo of their
    own; ``product_key`` is their duplicate cluster, else their item group (``groups_df``:
    sku_id, item_group_id, see ``read_item_groups``), else themselves: one product each.

    A listing in both a cluster and an item group counts as its cluster's product: a count,
    close enough for plans and the gate (duplicate clusters hold at most one variant of a
    group, ``lookalike.stages.duplicates``)."""
    listings_df = embeddings_df.filter(F.col("is_active")).select("sku_id", "category")
    if shared_photos_df is not None:
        listings_df = listings_df.join(shared_photos_df.select("sku_id"), "sku_id", "left_anti")
    membership = clusters_df.select("sku_id", "cluster_id")
    listings_df = listings_df.join(membership, "sku_id", "left")
    group_key = F.lit(None).cast("string")
    if groups_df is not None:
        listings_df = listings_df.join(
            groups_df.select("sku_id", "item_group_id"), "sku_id", "left"
        )
        group_key = F.concat(F.lit("group:"), F.col("item_group_id"))
    return listings_df.withColumn(
        "product_key", F.coalesce(F.col("cluster_id"), group_key, F.col("sku_id"))
    ).drop("item_group_id")


def extra_for_clusters(largest: int, redundant: int, k: int) -> int:
    """Extra neighbors to ask of a category so that K distinct products remain: each of the
    K products kept can bring its other listings along (cluster members or variants of an
    item group: largest - 1 places each), the SKU's own product as many again (+1 when the
    SKU borrows from another category), and never more than the category's redundant listings
    (listings beyond one per product) + 1."""
    if largest <= 1:
        return 0
    return min((k + 1) * (largest - 1) + 1, redundant + 1, MAX_EXTRA_NEIGHBORS)


@dataclasses.dataclass(frozen=True)
class CategoryPlan:
    """What the neighbors stage needs per category (one row per category on the driver)."""

    category: str
    products: int  # distinct products among the eligible listings
    extra: int  # extra neighbors asked of its shards (clusters)
    path: tuple[str, ...] | None  # category_path levels, None without


def plan_categories(
    eligible_df: DataFrame, paths_df: DataFrame, k: int
) -> tuple[dict[str, CategoryPlan], dict[str, int]]:
    """Per category (products, extra neighbors, path) and products per ancestor path:
    Spark aggregates, one row per category and per ancestor to the driver."""
    # Products of several listings (clusters, item groups) take places; single ones count 1.
    per_cluster = (
        eligible_df.groupBy("category", "product_key")
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


def item_groups(catalog_df: DataFrame) -> DataFrame | None:
    """(sku_id, item_group_id) of the listings in an item group (the variants of one product);
    None when the catalog has no item_group_id column."""
    if "item_group_id" not in catalog_df.columns:
        return None
    return catalog_df.filter(F.col("item_group_id").isNotNull()).select("sku_id", "item_group_id")


def read_item_groups(spark: SparkSession, ctx: RunContext) -> DataFrame | None:
    """The run's catalog's item groups; None without the optional column (or without a
    catalog: a run folder made from vectors alone)."""
    if not ctx.layout.catalog.exists():
        return None
    return item_groups(read(spark, ctx.layout.catalog, "neighbors"))


def read_category_paths(spark: SparkSession, ctx: RunContext) -> DataFrame:
    """(category, category_path) of the run's catalog; empty without the optional column
    (or without a catalog: a run folder made from vectors alone)."""
    if not ctx.layout.catalog.exists():
        return spark.createDataFrame([], "category string, category_path string")
    return category_paths(read(spark, ctx.layout.catalog, "neighbors"))
