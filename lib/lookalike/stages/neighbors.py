"""Neighbors: the top-K most similar SKUs of every active SKU, within its category.

Every pair of (sub-)shards of a category is queried where it is opened (one task per pair,
files memory-mapped): a SKU's vector, read from its own shard, asks every sub-shard of its
category, and Spark merges the answers by score, so the catalog's vectors never pass through
the driver. Self and inactive SKUs are removed; equal scores are ordered by sku_id, so the
answer is stable from run to run.

A row shows each product once: members of the SKU's own duplicate cluster are left out, and
of any other cluster only one listing is kept (its canonical listing where that is a
candidate, else the best-scoring member). The same holds for item groups, the variants of
one product in the catalog's optional ``item_group_id`` (a dress in several sizes or colours):
the SKU's own variants are left out, and of any other group only its best-scoring variant
(own category first) is kept; a null ``item_group_id`` is no group and matches nothing. Both
are removed before the top-K is cut, so a row still fills up from other products. Listings
without a photo of their own (one image shared by many listings: a placeholder) get no similar
items and are nobody's similar item.

With an optional ``category_path`` (``Women > Dresses > Maxi``), a category too small to fill
K borrows from the categories under its parent, then its grandparent, ...: only its own
(few) listings ask those categories' shards, and each row's ``source`` says where it came
from (``category`` or the ancestor path), own-category rows first.
"""

from __future__ import annotations

import dataclasses
from functools import reduce
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.core.ann import Shard
from lookalike.core.storage import Location
from lookalike.stages.common import read, read_shared_photos, write
from lookalike.stages.index import map_shard_pairs, measure_recall
from lookalike.stages.neighbor_plans import (
    PATH_SEPARATOR,
    borrowing_pairs,
    borrowing_targets,
    eligible_listings,
    plan_categories,
    read_category_paths,
    read_item_groups,
)

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

# The value of ``source`` for a listing of the SKU's own category.
OWN_CATEGORY = "category"
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
    ``extra`` adds neighbors per target category (see ``extra_for_clusters``).
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


def _with_source(similar_df: DataFrame) -> DataFrame:
    if "source" in similar_df.columns:
        return similar_df
    return similar_df.withColumn("source", F.lit(OWN_CATEGORY))


def memberships(clusters_df: DataFrame) -> DataFrame:
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
    membership = memberships(clusters_df).select("sku_id", "cluster_id")
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
    membership = memberships(clusters_df).select(
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


def mark_variants(similar_df: DataFrame, groups_df: DataFrame) -> DataFrame:
    """Candidates with ``is_own_variant`` (the candidate is in the SKU's own item group) and
    ``is_repeated_variant`` (another group's variant below that group's best candidate: own
    category first, then score, then similar_sku_id). ``groups_df``: (sku_id, item_group_id)
    of the listings in a group; a listing outside it (or with a null group) is in none."""
    groups = groups_df.filter(F.col("item_group_id").isNotNull()).select("sku_id", "item_group_id")
    own = groups.select("sku_id", F.col("item_group_id").alias("own_group"))
    theirs = groups.select(
        F.col("sku_id").alias("similar_sku_id"), F.col("item_group_id").alias("similar_group")
    )
    per_group = Window.partitionBy("sku_id", "variant_key").orderBy(
        *borrowed_first_key(F.col("source")), F.col("score").desc(), F.col("similar_sku_id")
    )
    return (
        _with_source(similar_df)
        .join(own, "sku_id", "left")
        .join(theirs, "similar_sku_id", "left")
        .withColumn(
            "is_own_variant", F.coalesce(F.col("own_group") == F.col("similar_group"), F.lit(False))
        )
        # The own variants' partition is dropped whole: they never hide another group's best.
        .withColumn(
            "variant_key",
            F.when(F.col("is_own_variant"), F.lit(None)).otherwise(
                F.coalesce(F.concat(F.lit("group:"), "similar_group"), "similar_sku_id")
            ),
        )
        .withColumn(
            "is_repeated_variant",
            ~F.col("is_own_variant")
            & F.col("similar_group").isNotNull()
            & (F.row_number().over(per_group) > 1),
        )
        .drop("own_group", "similar_group", "variant_key")
    )


def without_variants(marked_df: DataFrame) -> DataFrame:
    """``mark_variants``' candidates minus the SKU's own variants and other groups' repeats."""
    return marked_df.filter(~F.col("is_own_variant") & ~F.col("is_repeated_variant")).drop(
        "is_own_variant", "is_repeated_variant"
    )


def best_k(
    similar_df: DataFrame, clusters_df: DataFrame, k: int, groups_df: DataFrame | None = None
) -> DataFrame:
    """The published rows: candidates merged per SKU, each product once (own duplicates and
    own variants out, one listing per other cluster and per other item group), own category
    first, at most k per SKU. Without ``groups_df`` (see ``mark_variants``) there are no
    item groups."""
    candidates_df = filter_repeated_products(similar_df, clusters_df)
    if groups_df is not None:
        candidates_df = without_variants(mark_variants(candidates_df, groups_df))
    return without_own_duplicates(candidates_df, clusters_df, k)


# --- the stage --------------------------------------------------------------------------------


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    manifest_df = read(spark, ctx.layout.index_manifest, "neighbors")
    clusters_df = read(spark, ctx.layout.duplicate_clusters, "neighbors")
    embeddings_df = read(spark, ctx.layout.embeddings, "neighbors")
    shared_df = read_shared_photos(spark, ctx)
    groups_df = read_item_groups(spark, ctx)
    settings = ctx.config.neighbors
    k, search_k = settings.k, ctx.config.index.search_k
    # One row per category (and per ancestor path) reaches the driver, like the manifest.
    plans, products_under = plan_categories(
        eligible_listings(embeddings_df, clusters_df, shared_df, groups_df),
        read_category_paths(spark, ctx),
        k,
    )
    # Clusters and item groups take places that are then given to the next products: ask each
    # category's
    # shards for enough more that K distinct products remain.
    extra = {category: plan.extra for category, plan in plans.items()}
    shared_path = None if shared_df is None else str(ctx.layout.shared_photos)
    candidates = [
        similar_items(
            manifest_df,
            k=k,
            extra=extra,
            search_k=search_k,
            run_id=ctx.run_id,
            shared_photos=shared_path,
        )
    ]
    # Categories too small for K ask their relatives' shards: only their own few listings.
    borrowing = (
        borrowing_targets(plans, products_under, k) if settings.borrow_from_ancestors else {}
    )
    if borrowing:
        pairs, sources = borrowing_pairs(manifest_df, borrowing)
        candidates.append(
            similar_items(
                manifest_df,
                # + 1: a member of the SKU's own cluster in the other category takes a place.
                k=k + 1,
                extra=extra,
                search_k=search_k,
                run_id=ctx.run_id,
                pairs=pairs,
                sources=sources,
                shared_photos=shared_path,
            )
        )
    # Merges each SKU's candidates (sub-shards, borrowed) by source and score, keeps k: as
    # best_k, with the variants dropped counted as they pass.
    # Written as the shards answered (the styles stage reads them), then read back: the
    # shards are asked once.
    write(reduce(DataFrame.unionByName, candidates), ctx.layout.neighbor_candidates)
    candidates_df = filter_repeated_products(
        read(spark, ctx.layout.neighbor_candidates, "neighbors"), clusters_df
    )
    variants = None
    if groups_df is not None:
        variants = Observation("variants")
        candidates_df = without_variants(
            mark_variants(candidates_df, groups_df).observe(
                variants,
                F.count_if("is_own_variant").alias("own"),
                F.count_if("is_repeated_variant").alias("repeated"),
            )
        )
    similar_df = without_own_duplicates(candidates_df, clusters_df, k)
    n_rows = write(similar_df, ctx.layout.similar_items)
    dropped = variants.get if variants is not None else {}
    per_sku = (
        read(spark, ctx.layout.similar_items, "neighbors")
        .groupBy("sku_id")
        .agg(
            F.count(F.lit(1)).alias("count"),
            F.count_if(F.col("source") != OWN_CATEGORY).alias("borrowed"),
        )
        .agg(
            F.count(F.lit(1)).alias("skus"),
            F.count_if(F.col("count") == k).alias("skus_with_full_k"),
            F.count_if(F.col("borrowed") > 0).alias("skus_borrowing"),
            F.sum("borrowed").alias("borrowed_rows"),
        )
        .first()
    )
    counts = {
        "rows": n_rows,
        "skus": per_sku["skus"],
        "skus_with_full_k": per_sku["skus_with_full_k"],
        "skus_borrowing": per_sku["skus_borrowing"] or 0,
        "borrowed_rows": per_sku["borrowed_rows"] or 0,
        "categories_borrowing": len(borrowing),
        "listings_without_own_photo": 0 if shared_df is None else shared_df.count(),
        # Candidates (more than K per SKU), not rows: the SKU's own variants, and the variants
        # of another item group below its best one.
        "variant_candidates_dropped": dropped.get("own") or 0,
        "repeated_variant_candidates_dropped": dropped.get("repeated") or 0,
    }
    if settings.recall_queries:
        counts |= _measured_recall(manifest_df, ctx)
    return counts


def _measured_recall(manifest_df: DataFrame, ctx: RunContext) -> dict:
    """recall@k of the Annoy shards on sampled queries: pooled, worst shard, and per shard
    (one row per shard reaches the driver)."""
    k = ctx.config.neighbors.k
    rows = measure_recall(
        manifest_df,
        k=k,
        search_k=ctx.config.index.search_k,
        queries=ctx.config.neighbors.recall_queries,
        seed=ctx.config.index.seed,
    ).collect()
    measured = sorted((r for r in rows if r["wanted"]), key=lambda r: r["shard_id"])
    hits, wanted = sum(r["hits"] for r in measured), sum(r["wanted"] for r in measured)
    return {
        "recall_queries": sum(r["queries"] for r in measured),
        # Exact shards are exact by construction: 1.0 when no Annoy shard was sampled.
        "recall_at_k": round(hits / wanted, 4) if wanted else 1.0,
        "recall_at_k_min": round(min((r["hits"] / r["wanted"] for r in measured), default=1.0), 4),
        "recall_at_k_by_shard": {
            r["shard_id"]: round(r["hits"] / r["wanted"], 4) for r in measured
        },
    }
