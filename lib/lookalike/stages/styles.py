"""Styles: groups of listings that show the same design, per category (``style_groups``).

A style group is looser than a duplicate cluster (another photo, not a copy of one: the same
dress in another colour, the same sneaker from another seller) and tighter than similar
items. Merchandisers read them as assortment depth and overlap; the storefront as "other
colours / other sellers of this item"; fine-tuning as pairs that belong together.

The stage reads the neighbours the neighbors stage asked the shards for
(``neighbor_candidates``: each active SKU's nearest in its own category, before duplicates
and variants were taken out), never all pairs:

1. A duplicate cluster is one member, its canonical listing: its listings' neighbours become
   the canonical's, so a duplicate pair alone is one member and makes no group.
2. Each member keeps its ``styles.k`` best neighbours; per category, ``core.styles`` joins
   two members in each other's lists, at a cosine of at least ``styles.min_similarity``,
   sharing ``styles.min_shared`` of their neighbours, and the catalog's item groups (variants
   of one product) are joined whatever their photos. Groups are the connected components of
   at least two members (defaults chosen on real photos by ``benchmarks/style_groups.py``).
3. Each group's vectors, read from the category's shard files, give its cohesion (mean cosine
   over its pairs), its representative (the member closest to the group's mean) and each
   member's cosine to that mean.

``style_groups`` holds one row per member: the group's id (from its category and smallest
member, so it stays while the group does), size, cohesion and representative, and the
member's own similarity to the group.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.core.ann import Shard
from lookalike.core.styles import group_labels, group_summaries, member_similarities
from lookalike.stages.common import read, write
from lookalike.stages.neighbor_plans import read_item_groups
from lookalike.stages.neighbors import OWN_CATEGORY, memberships

if TYPE_CHECKING:
    from lookalike.config import StylesSettings
    from lookalike.pipeline import RunContext

log = logging.getLogger("lookalike")

STYLE_GROUPS_SCHEMA = T.StructType(
    [
        T.StructField("group_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("sku_id", T.StringType(), False),
        T.StructField("is_representative", T.BooleanType(), False),
        T.StructField("representative_sku_id", T.StringType(), False),
        T.StructField("group_size", T.IntegerType(), False),
        T.StructField("cohesion", T.FloatType(), False),
        # The member's cosine to the direction of the group's mean vector.
        T.StructField("similarity", T.FloatType(), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)
# Rows into the per-category grouping: a member's kept neighbours, and the catalog's links.
EDGE_SCHEMA = "category string, node string, other string, score double, is_link boolean"


def group_id_for(category: str, first_member: str) -> str:
    digest = hashlib.sha1(f"{category}\x00{first_member}".encode()).hexdigest()[:16]
    return f"style-{digest}"


def nodes_of(clusters_df: DataFrame) -> DataFrame:
    """(sku_id, node): every listing of a duplicate cluster stands as its canonical listing
    (the cluster's smallest sku_id where none is named)."""
    smallest = F.min("sku_id").over(Window.partitionBy("cluster_id"))
    return (
        memberships(clusters_df)
        .select("sku_id", F.coalesce("canonical_sku_id", smallest).alias("node"))
        .dropDuplicates(["sku_id"])
    )


def neighbour_edges(candidates_df: DataFrame, nodes_df: DataFrame, k: int) -> DataFrame:
    """Each member's k best other members of its category (a node's listings pooled)."""
    a = nodes_df.select("sku_id", F.col("node").alias("a_node"))
    b = nodes_df.select(F.col("sku_id").alias("similar_sku_id"), F.col("node").alias("b_node"))
    best = Window.partitionBy("category", "node").orderBy(F.col("score").desc(), "other")
    return (
        candidates_df.filter(F.col("source") == OWN_CATEGORY)
        .join(a, "sku_id", "left")
        .join(b, "similar_sku_id", "left")
        .select(
            "category",
            F.coalesce("a_node", "sku_id").alias("node"),
            F.coalesce("b_node", "similar_sku_id").alias("other"),
            F.col("score").cast("double").alias("score"),
        )
        .filter(F.col("node") != F.col("other"))
        .groupBy("category", "node", "other")
        .agg(F.max("score").alias("score"))
        .withColumn("rank", F.row_number().over(best))
        .filter(F.col("rank") <= k)
        .select("category", "node", "other", "score", F.lit(False).alias("is_link"))
    )


def variant_links(groups_df: DataFrame, nodes_df: DataFrame, catalog_df: DataFrame) -> DataFrame:
    """The catalog's item groups as links: each member node to its group's first, within
    one category (a variant in another category is another shard's business)."""
    first = Window.partitionBy("category", "item_group_id")
    return (
        groups_df.filter(F.col("item_group_id").isNotNull())
        .join(catalog_df.filter("is_active").select("sku_id", "category"), "sku_id")
        .join(nodes_df, "sku_id", "left")
        .select("category", "item_group_id", F.coalesce("node", "sku_id").alias("node"))
        .withColumn("other", F.min("node").over(first))
        .filter(F.col("node") != F.col("other"))
        .select(
            "category", "node", "other", F.lit(1.0).alias("score"), F.lit(True).alias("is_link")
        )
    )


def style_groups(
    edges_df: DataFrame, shard_rows: dict[str, list[dict]], settings: StylesSettings, run_id: str
) -> DataFrame:
    """One row per member of each category's groups (STYLE_GROUPS_SCHEMA), the category's
    vectors read from its shards' files where its task runs."""
    encoded = {c: json.dumps(rows, default=str) for c, rows in shard_rows.items()}

    def per_category(edges: pd.DataFrame) -> pd.DataFrame:
        category = edges["category"].iloc[0]
        names = np.unique(np.concatenate([edges["node"], edges["other"]]).astype(object))
        node = np.searchsorted(names, edges["node"].to_numpy(object))
        other = np.searchsorted(names, edges["other"].to_numpy(object))
        linked = edges["is_link"].to_numpy(bool)
        labels = group_labels(
            len(names),
            node[~linked],
            other[~linked],
            edges["score"].to_numpy(np.float64)[~linked],
            min_similarity=settings.min_similarity,
            min_shared=settings.min_shared,
            min_size=settings.min_size,
            links=(node[linked], other[linked]),
        )
        grouped = np.flatnonzero(labels >= 0)
        if len(grouped) == 0:
            return pd.DataFrame(columns=STYLE_GROUPS_SCHEMA.fieldNames())
        vectors, model_id = member_vectors(json.loads(encoded[category]), names[grouped])
        summaries = group_summaries(vectors, labels[grouped])
        similarity = member_similarities(vectors, labels[grouped])
        rows = []
        for position, member in enumerate(grouped):
            label = int(labels[member])
            representative, size, cohesion = summaries[label]
            rows.append(
                {
                    "group_id": group_id_for(category, names[label]),
                    "category": category,
                    "sku_id": names[member],
                    "is_representative": grouped[representative] == member,
                    "representative_sku_id": names[grouped[representative]],
                    "group_size": size,
                    "cohesion": cohesion,
                    "similarity": float(similarity[position]),
                    "model_id": model_id,
                    "run_id": run_id,
                }
            )
        return pd.DataFrame(rows, columns=STYLE_GROUPS_SCHEMA.fieldNames())

    return edges_df.groupBy("category").applyInPandas(per_category, schema=STYLE_GROUPS_SCHEMA)


def member_vectors(rows: list[dict], sku_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """The unit vectors of some SKUs of one category, read from its (sub-)shards' files
    (memory-mapped; ids are in sku_id order, so a lookup is a binary search), and the model
    that made them."""
    vectors = np.zeros((len(sku_ids), int(rows[0]["dim"])), np.float32)
    found = np.zeros(len(sku_ids), bool)
    for row in rows:
        shard = Shard.open(row)
        try:
            at = np.searchsorted(shard.sku_ids, sku_ids)
            at = np.minimum(at, len(shard.sku_ids) - 1)
            here = shard.sku_ids[at] == sku_ids
            vectors[here] = shard.item_vectors(at[here])
            found |= here
        finally:
            shard.close()
    if not found.all():
        missing = sku_ids[~found][:5].tolist()
        raise RuntimeError(
            f"category {rows[0]['category']!r}: no vector in its shards for {missing}"
        )
    return vectors, rows[0]["model_id"]


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    settings = ctx.config.styles
    layout = ctx.layout
    candidates_df = read(spark, layout.neighbor_candidates, "styles")
    nodes_df = nodes_of(read(spark, layout.duplicate_clusters, "styles"))
    # The neighbors stage asked the shards for neighbors.k (and more where clusters take
    # places): a larger styles.k cannot be read.
    k = min(settings.k, ctx.config.neighbors.k)
    if k < settings.k:
        log.warning("styles.k %d is above neighbors.k: reading %d neighbours", settings.k, k)
    edges_df = neighbour_edges(candidates_df, nodes_df, k)
    groups_df = read_item_groups(spark, ctx)
    if groups_df is not None:
        catalog_df = read(spark, layout.catalog, "styles")
        edges_df = edges_df.unionByName(variant_links(groups_df, nodes_df, catalog_df))
    shard_rows: dict[str, list[dict]] = {}
    for row in read(spark, layout.index_manifest, "styles").collect():  # one row per shard
        shard_rows.setdefault(row["category"], []).append(row.asDict())
    n_rows = write(style_groups(edges_df, shard_rows, settings, ctx.run_id), layout.style_groups)
    summary = (
        read(spark, layout.style_groups, "styles")
        .groupBy("group_id")
        .agg(F.first("category").alias("category"), F.count(F.lit(1)).alias("size"))
        .agg(
            F.count(F.lit(1)).alias("groups"),
            F.max("size").alias("largest"),
            F.countDistinct("category").alias("categories"),
        )
        .first()
    )
    return {
        "neighbours_read": k,
        "groups": summary["groups"],
        "listings_in_groups": n_rows,
        "largest_group": summary["largest"] or 0,
        "categories_with_groups": summary["categories"],
    }
