"""Quality gates: measured before publishing; one failing gate publishes nothing.

Each gate is one number from this run's outputs (compared with the previous published run
where that is the point), a threshold from the ``gates`` section of the configuration, and a
verdict. All of them go into the ``runs`` record, passing or not, so the on-call engineer sees
the measured values next to the limits.

- ``full_topk_share``: active embedded SKUs whose similar items are as many as their
  category can give / active embedded SKUs with a photo of their own. "As many as it can
  give" is min(K, products of the category - 1): the category's active listings with a
  photo of their own, a duplicate cluster or an item group (variants) counting as one product
  (a row shows each product once and never the SKU's own cluster or variants); with a
  ``category_path`` of two or more levels, the products under its top level (a small category
  borrows from its relatives). A listing of a 3-listing category with 2 similar items is
  complete; a listing of a big category that lost its neighbors is not. Listings without a
  photo of their own (``shared_photos``) give and get nothing and are not counted.
- ``reject_rate``: rejected catalog rows (ingest + embed) / catalog rows read.
- ``top1_score_spread``: standard deviation of each SKU's best score; a model that returns
  (nearly) constant vectors gives every SKU a best score of 1.0 and a spread of 0. It is 0
  too when no SKU got any similar item although categories hold several listings: constant
  vectors also make every category one duplicate cluster, whose members are left out.
- ``top1_score_shift``: |median best score - the previous published run's|.
- ``recall_at_k``: recall@K of the neighbors stage's Annoy search against exact answers, on
  queries it sampled per shard (``neighbors.recall_queries``), all shards pooled.
- ``topk_churn``: mean share of a SKU's similar items that were not among them in the previous
  published run (SKUs present in both).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike import tables
from lookalike.config import GateSettings
from lookalike.core.storage import Location
from lookalike.stages.neighbor_plans import PATH_SEPARATOR, eligible_listings

log = logging.getLogger("lookalike")


class GateFailed(RuntimeError):
    """A quality gate failed: the run was not published."""

    def __init__(self, results: list[GateResult]) -> None:
        failed = [r for r in results if not r.passed]
        super().__init__(
            "quality gate(s) failed, nothing published: "
            + "; ".join(f"{r.gate} = {r.value:.4g} (limit {r.limit_text})" for r in failed)
        )
        self.results = results


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float
    threshold: float
    kind: str  # "min" or "max"
    passed: bool

    @property
    def limit_text(self) -> str:
        return f"{'>=' if self.kind == 'min' else '<='} {self.threshold:g}"


def _gate(gate: str, value: float | None, threshold: float, kind: str) -> GateResult | None:
    if value is None:  # nothing to compare with (first run, no active SKU)
        return None
    passed = value >= threshold if kind == "min" else value <= threshold
    return GateResult(gate, float(value), float(threshold), kind, bool(passed))


def published_similar_items(spark: SparkSession, table: Path | Location) -> DataFrame | None:
    """The storefront's current similar_items (the previous published run), if any."""
    return tables.read_with_spark(spark, table)


def with_attainable_k(eligible_df: DataFrame, paths_df: DataFrame | None, k: int) -> DataFrame:
    """Adds ``attainable``: how many similar items a listing can get, min(K, products of its
    pool - 1); the pool is its category, or the top level of a category_path of two or more
    levels (where a small category borrows). Spark aggregates, one row per pool."""
    if paths_df is None:
        listings_df = eligible_df.withColumn("category_path", F.lit(None).cast("string"))
    else:
        listings_df = eligible_df.join(paths_df, "category", "left")
    levels = F.split(F.col("category_path"), PATH_SEPARATOR, -1)
    pooled_df = listings_df.withColumn(
        "pool",
        F.when(F.size(levels) >= 2, F.concat(F.lit("path:"), levels[0])).otherwise(
            F.concat(F.lit("category:"), F.col("category"))
        ),
    ).withColumn(
        # A top-level path holds the categories under it too: "Women" and "Women > Tops".
        "top_level",
        F.when(F.col("category_path").isNotNull(), F.concat(F.lit("path:"), levels[0])),
    )
    by_category = pooled_df.groupBy(F.concat(F.lit("category:"), "category").alias("pool")).agg(
        F.count_distinct("product_key").alias("products")
    )
    by_top_level = (
        pooled_df.filter(F.col("top_level").isNotNull())
        .groupBy(F.col("top_level").alias("pool"))
        .agg(F.count_distinct("product_key").alias("products"))
    )
    return pooled_df.join(by_category.unionByName(by_top_level), "pool", "left").withColumn(
        "attainable", F.least(F.lit(k), F.col("products") - 1).cast("long")
    )


def evaluate_gates(
    settings: GateSettings,
    *,
    k: int,
    similar_df: DataFrame,
    embeddings_df: DataFrame,
    previous_df: DataFrame | None,
    rows_read: int,
    rows_rejected: int,
    recall: float | None = None,
    clusters_df: DataFrame | None = None,
    shared_photos_df: DataFrame | None = None,
    paths_df: DataFrame | None = None,
    groups_df: DataFrame | None = None,
) -> list[GateResult]:
    """Every configured gate's measured value and verdict. ``clusters_df`` (duplicate
    clusters), ``shared_photos_df`` (listings without a photo of their own) and
    ``paths_df`` (category, category_path) and ``groups_df`` (sku_id, item_group_id: the
    variants of one product) say how many similar items each listing can get; without them
    every other active listing of its category counts."""
    spark = similar_df.sparkSession
    per_sku = similar_df.groupBy("sku_id").agg(
        F.count(F.lit(1)).alias("n"), F.max("score").alias("top1")
    )
    if "category" not in embeddings_df.columns:
        embeddings_df = embeddings_df.withColumn("category", F.lit(""))
    if clusters_df is None:
        clusters_df = spark.createDataFrame([], "cluster_id string, sku_id string")
    listings_df = with_attainable_k(
        eligible_listings(embeddings_df, clusters_df, shared_photos_df, groups_df), paths_df, k
    )
    coverage = (
        listings_df.join(per_sku, "sku_id", "left")
        .agg(
            F.count(F.lit(1)).alias("active"),
            F.count_if(F.coalesce(F.col("n"), F.lit(0)) >= F.col("attainable")).alias("full"),
            F.count_if(F.col("attainable") < k).alias("limited"),
            F.count_if(F.col("n").isNotNull()).alias("with_rows"),
            F.stddev_pop("top1").alias("spread"),
            F.percentile_approx("top1", 0.5).alias("median"),
        )
        .first()
    )
    n_shared = 0 if shared_photos_df is None else shared_photos_df.count()
    log.info(
        "gate full_topk_share: %d of %d active listings have as many similar items as their "
        "category can give (K = %d; %d of them can get fewer than K); %d listings without a "
        "photo of their own not counted",
        coverage["full"],
        coverage["active"],
        k,
        coverage["limited"],
        n_shared,
    )
    spread = coverage["spread"]
    if coverage["with_rows"] == 0 and coverage["active"]:
        # Nobody got anything: every category one product (constant vectors), or a stage
        # that wrote nothing. Only sizes excuse it: a catalog of single listings.
        sizes_df = embeddings_df.filter(F.col("is_active")).groupBy("category").count()
        if sizes_df.filter(F.col("count") >= 2).limit(1).count():
            spread = 0.0
    results = [
        _gate(
            "full_topk_share",
            coverage["full"] / coverage["active"] if coverage["active"] else None,
            settings.min_full_topk_share,
            "min",
        ),
        _gate(
            "reject_rate",
            rows_rejected / rows_read if rows_read else None,
            settings.max_reject_rate,
            "max",
        ),
        _gate("top1_score_spread", spread, settings.min_top1_score_spread, "min"),
        # Measured by the neighbors stage (sampled queries against exact answers); absent
        # when it was not measured.
        _gate("recall_at_k", recall, settings.min_recall, "min"),
    ]
    if previous_df is not None:
        before = previous_df.groupBy("sku_id").agg(F.max("score").alias("top1"))
        previous_median = before.agg(F.percentile_approx("top1", 0.5)).first()[0]
        shift = (
            None
            if previous_median is None or coverage["median"] is None
            else abs(coverage["median"] - previous_median)
        )
        results.append(_gate("top1_score_shift", shift, settings.max_top1_score_shift, "max"))
        kept = (
            similar_df.select("sku_id", "similar_sku_id")
            .join(previous_df.select("sku_id", "similar_sku_id"), ["sku_id", "similar_sku_id"])
            .groupBy("sku_id")
            .count()
        )
        churn = (
            similar_df.groupBy("sku_id")
            .agg(F.count(F.lit(1)).alias("n"))
            .join(previous_df.select("sku_id").distinct(), "sku_id")
            .join(kept, "sku_id", "left")
            .agg(F.avg(1 - F.coalesce(F.col("count"), F.lit(0)) / F.col("n")))
            .first()[0]
        )
        results.append(_gate("topk_churn", churn, settings.max_topk_churn, "max"))
    return [r for r in results if r is not None]


def results_json(results: list[GateResult]) -> str:
    return json.dumps({r.gate: asdict(r) for r in results}, sort_keys=True)
