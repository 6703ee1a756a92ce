"""Duplicates: clusters of listings that show the same product photo.

Evidence, each found without comparing all pairs:
- ``content_hash``: byte-identical image files (grouped by hash, across categories);
- ``phash``: perceptual hashes at most ``phash_max_distance`` bits apart, the photo's or its
  mirror image's (candidates from a join on 16-bit bands of the hash, across categories),
  confirmed by a descriptor similarity of at least ``phash_min_similarity``;
- ``embedding``: among each SKU's nearest neighbors in its category's index with a cosine
  of at least ``candidate_min_similarity``, those whose duplicate descriptors reach
  ``min_similarity`` (re-encoded, resized, cropped, padded, watermarked copies);
- ``aligned``: those candidates whose descriptors fall short of ``min_similarity`` but reach
  ``aligned_min_similarity``, when the pair's grey thumbnails line up
  (``lookalike.core.thumbnails``: a crop of the original found by searching window sizes and
  positions).

The *duplicate descriptor* is the R-MAC vector stored beside each embedding (regional max
pooling of the same forward pass, ``lookalike.core.rmac.rmac``): cropped and padded copies
stay closer to their original in it than in the average-pooled vector that similar items use,
while other photos of the same product type do not (``benchmarks/duplicates_quality.py``:
recall 0.845 -> 0.922, precision 1.000 -> 0.994). Embeddings without it (synthetic ones) use the
vector itself.
Merchandisers' decisions in ``duplicate_reviews`` come last: a pair marked ``not_duplicate``
is dropped, a ``confirmed`` pair is kept whatever the evidence says tonight, and a listing
marked ``canonical`` (a row naming it twice, sku_id_a == sku_id_b) is its cluster's canonical
listing. The latest decision on a pair wins; a canonical decision is never a pair.

*Shared photos* come first: one image (the same bytes, or the same pixels re-encoded) shown
by at least ``shared_photo_min_listings`` listings that differ (more than one category, or
distinct titles for at least ``shared_photo_min_title_share`` of them) is a placeholder, a
logo or a blank, not a product photographed once: those listings have no photo of their own.
They are written apart (``shared_photos``) and take no part in any pair, so they neither form
a cluster nor pull other listings into one. The variants of one item group count as one
listing there (five sizes of a dress under one photo, titled by size, are one product's own
photo).

Accepted pairs are joined into clusters by connected components, computed with Spark joins,
with a guard against chaining: every member must be close to its cluster's canonical listing
(same bytes, cosine at least ``chain_min_similarity``, or a ``confirmed`` review) and not
marked ``not_duplicate`` with it; members that are not are detached and clustered again
among themselves. The canonical listing: a merchandiser's choice first (the latest
``canonical`` decision when two members of a cluster have one), then the active one, then the
oldest (``updated_at``), then the one with a title, then the smallest sku_id. The guard measures
closeness to that listing whoever chose it, so a reviewer's choice can detach members that were
close only to the listing the rule would have chosen.

*Variants* of one product (the catalog's optional ``item_group_id``: the same dress in several
sizes or colours, often with the same photo) are not duplicate listings. A pair of two listings
of one item group is dropped where the pairs are formed, whatever found it (a ``confirmed``
review of such a pair too: the feed says they are one product's variants; fix the feed to
change that), and counted (``variant_pairs_dropped``). A cluster holds at most one variant of
each group: a third listing can pair with two variants (a seller's copy of the photo both
use), and then the guard keeps the canonical listing's variant, else the one closest to the
canonical listing, and detaches the others (``variant_members_detached``), which are
clustered again among themselves (with no pair between them, they stay alone). A null
``item_group_id`` is no group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.window import Window

from lookalike import tables
from lookalike.stages.common import counted, read, write
from lookalike.stages.duplicate_pairs import (
    confirmed_by_descriptor,
    content_hash_pairs,
    descriptor_column,
    descriptor_similarity,
    embedding_pairs,
    hamming,
    merge_pairs,
    phash_pairs,
)
from lookalike.stages.neighbor_plans import item_groups
from lookalike.stages.shared_photos import shared_photos, without_shared_photos

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext


def connected_components(pairs_df: DataFrame, max_iterations: int = 100) -> DataFrame:
    """(sku_id, component): component is the smallest sku_id reachable through the pairs.

    Min-label propagation with DataFrame joins: each round, a node takes the smallest label
    among itself and its neighbors. Rounds grow with a cluster's diameter, which is small
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


# --- merchandisers' decisions ----------------------------------------------------------------

REVIEWS_SCHEMA = from_arrow_schema(tables.REVIEWS_SCHEMA)
NOT_DUPLICATE = "not_duplicate"
CONFIRMED = "confirmed"
CANONICAL = "canonical"
# DECISIONS keeps the meaning it always had, the decisions on a pair of two listings (what
# ``latest_decisions`` reads and ``lookalike review`` offers); CANONICAL names one listing, so
# it is apart. ALL_DECISIONS is every value a ``duplicate_reviews`` row may hold (the review app).
PAIR_DECISIONS = (NOT_DUPLICATE, CONFIRMED)
DECISIONS = PAIR_DECISIONS
ALL_DECISIONS = (NOT_DUPLICATE, CONFIRMED, CANONICAL)


def latest_decisions(reviews_df: DataFrame) -> DataFrame:
    """(sku_id_a < sku_id_b, decision): each pair's latest review, whichever way it was typed.

    Only pair decisions on two different listings: a ``canonical`` row (a == b) is no pair, and
    a hand-written pair decision naming one listing twice would make a listing its own pair.
    """
    latest_first = Window.partitionBy("sku_id_a", "sku_id_b").orderBy(F.col("decided_at").desc())
    return (
        reviews_df.filter(
            F.col("decision").isin(*PAIR_DECISIONS) & (F.col("sku_id_a") != F.col("sku_id_b"))
        )
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


def without_variant_pairs(pairs_df: DataFrame, groups_df: DataFrame | None) -> DataFrame:
    """``pairs_df`` minus the pairs of two listings of one item group (variants of one product).
    ``groups_df``: (sku_id, item_group_id), null groups ignored; None: no groups, no change."""
    if groups_df is None:
        return pairs_df
    groups = groups_df.filter(F.col("item_group_id").isNotNull()).select("sku_id", "item_group_id")
    return (
        pairs_df.join(
            groups.select(F.col("sku_id").alias("sku_id_a"), F.col("item_group_id").alias("g_a")),
            "sku_id_a",
            "left",
        )
        .join(
            groups.select(F.col("sku_id").alias("sku_id_b"), F.col("item_group_id").alias("g_b")),
            "sku_id_b",
            "left",
        )
        .filter(F.col("g_a").isNull() | F.col("g_b").isNull() | (F.col("g_a") != F.col("g_b")))
        .select(*pairs_df.columns)
    )


def canonical_choices(reviews_df: DataFrame) -> DataFrame:
    """(sku_id, chosen_at): listings a merchandiser chose as canonical, with the latest time.

    Kept per listing, not per cluster: clusters are tonight's, and a choice made in last
    week's cluster still applies to whichever cluster the listing is in now.
    """
    return (
        reviews_df.filter(
            (F.col("decision") == CANONICAL) & (F.col("sku_id_a") == F.col("sku_id_b"))
        )
        .groupBy(F.col("sku_id_a").alias("sku_id"))
        .agg(F.max("decided_at").alias("chosen_at"))
    )


def _with_canonical(
    components_df: DataFrame, catalog_df: DataFrame, choices_df: DataFrame | None = None
) -> DataFrame:
    """Components with each one's canonical listing (the documented rule) and category.

    ``choices_df`` (``canonical_choices``) puts a merchandiser's choice first, the latest
    choice first among several; without one the rule decides, as before there were choices.
    """
    if choices_df is None:
        choices_df = components_df.sparkSession.createDataFrame(
            [], "sku_id string, chosen_at timestamp"
        )
    canonical_first = Window.partitionBy("component").orderBy(
        F.col("chosen_at").desc_nulls_last(),
        F.col("is_active").desc(),
        F.col("updated_at").asc_nulls_last(),
        F.col("has_title").desc(),
        F.col("sku_id").asc(),
    )
    group = (
        F.col("item_group_id")
        if "item_group_id" in catalog_df.columns
        else F.lit(None).cast("string")
    )
    listings = catalog_df.select(
        "sku_id",
        "category",
        "is_active",
        "updated_at",
        (F.coalesce(F.length(F.trim("title")), F.lit(0)) > 0).alias("has_title"),
        group.alias("item_group_id"),
    )
    return (
        components_df.join(listings, "sku_id")
        .join(F.broadcast(choices_df.select("sku_id", "chosen_at")), "sku_id", "left")
        .withColumn("canonical_sku_id", F.first("sku_id").over(canonical_first))
        .select("sku_id", "component", "canonical_sku_id", "category", "item_group_id")
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
            "item_group_id",
            (F.col("content_hash") == F.col("c_content_hash")).alias("same_bytes"),
            descriptor_similarity(F.col("descriptor"), F.col("c_descriptor")).alias("cosine"),
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
    choices_df: DataFrame | None = None,
    max_rounds: int = 5,
    counts: dict[str, int] | None = None,
) -> DataFrame:
    """duplicate_clusters rows: one per listing in a cluster, with its canonical listing.

    ``pairs_df`` are the accepted pairs (after ``apply_decisions``); ``choices_df`` the
    merchandisers' canonical listings (``canonical_choices``). Each round clusters the
    remaining pairs, keeps the members close to their canonical listing, and sends the
    others (with the pairs among them) to the next round: a chain A~B~C with A far from C
    never puts A and C in one cluster. Of several variants of one item group (the catalog's
    ``item_group_id``) in a component, only the canonical listing's variant, else the one
    closest to it, stays; ``counts`` (when given) gets ``variant_members_detached``.
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
            _with_canonical(components_df, catalog_df, choices_df), embeddings_df, decisions_df
        )
        close = (F.col("sku_id") == F.col("canonical_sku_id")) | (
            F.coalesce(F.col("decision"), F.lit("")) != NOT_DUPLICATE
        ) & (
            F.coalesce(F.col("decision") == CONFIRMED, F.lit(False))
            | F.coalesce(F.col("same_bytes"), F.lit(False))
            | (F.coalesce(F.col("cosine"), F.lit(-1.0)) >= chain_min_similarity)
        )
        # NULL (no review, no vector) must read as "not close", never drop the member.
        members_df = members_df.withColumn("close", F.coalesce(close, F.lit(False)))
        # One variant per item group: the canonical's, else the closest of the close ones.
        per_group = Window.partitionBy("component", "item_group_id").orderBy(
            F.col("close").desc(),
            (F.col("sku_id") == F.col("canonical_sku_id")).desc(),
            F.coalesce(F.col("same_bytes"), F.lit(False)).desc(),
            F.col("cosine").desc_nulls_last(),
            F.col("sku_id"),
        )
        members_df = (
            members_df.withColumn(
                "repeated_variant",
                F.col("item_group_id").isNotNull()
                & F.col("close")
                & (F.row_number().over(per_group) > 1),
            )
            .withColumn("close", F.col("close") & ~F.col("repeated_variant"))
            .localCheckpoint()
        )
        if counts is not None:
            counts["variant_members_detached"] = (
                counts.get("variant_members_detached", 0)
                + members_df.filter("repeated_variant").count()
            )
        # A canonical listing left alone is no cluster.
        kept_df = members_df.filter("close").withColumn(
            "size", F.count(F.lit(1)).over(Window.partitionBy("component"))
        )
        kept_parts.append(
            kept_df.filter(F.col("size") > 1).drop(
                "size", "close", "decision", "item_group_id", "repeated_variant"
            )
        )
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


# --- the stage --------------------------------------------------------------------------------


def _reviews(spark: SparkSession, ctx: RunContext) -> DataFrame:
    """The merchandisers' ``duplicate_reviews`` table (read only: the job never writes it)."""
    reviews_df = tables.read_with_spark(spark, ctx.layout.table("duplicate_reviews"))
    return reviews_df if reviews_df is not None else spark.createDataFrame([], REVIEWS_SCHEMA)


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    embeddings_df = read(spark, ctx.layout.embeddings, "duplicates")
    manifest_df = read(spark, ctx.layout.index_manifest, "duplicates")
    catalog_df = read(spark, ctx.layout.catalog, "duplicates")
    settings = ctx.config.duplicates
    # Read once: the pair decisions and the canonical choices both come from these rows.
    reviews_df = _reviews(spark, ctx).localCheckpoint()
    decisions_df = latest_decisions(reviews_df).localCheckpoint()
    choices_df = canonical_choices(reviews_df).localCheckpoint()
    # Placeholders first: their listings are no evidence of anything, for any kind of pair.
    n_shared = write(
        shared_photos(
            embeddings_df,
            catalog_df,
            run_id=ctx.run_id,
            min_listings=settings.shared_photo_min_listings,
            min_title_share=settings.shared_photo_min_title_share,
            min_similarity=settings.shared_photo_min_similarity,
            max_distance=settings.phash_max_distance,
            max_bucket=settings.phash_max_bucket,
        ),
        ctx.layout.shared_photos,
    )
    shared_df = read(spark, ctx.layout.shared_photos, "duplicates")
    own_photo_df = without_shared_photos(embeddings_df, shared_df)
    evidence_df = merge_pairs(
        content_hash_pairs(own_photo_df),
        phash_pairs(
            own_photo_df,
            max_distance=settings.phash_max_distance,
            max_bucket=settings.phash_max_bucket,
            min_similarity=settings.phash_min_similarity,
        ),
        confirmed_by_descriptor(
            # The index holds every listing: its answers lose the placeholders here, before
            # their descriptors are joined.
            without_shared_photos(
                embedding_pairs(
                    manifest_df,
                    min_similarity=settings.candidate_min_similarity,
                    candidates=settings.candidates_per_sku,
                    search_k=settings.search_k,
                ),
                shared_df,
            ),
            own_photo_df,
            min_similarity=settings.min_similarity,
            aligned_min_similarity=settings.aligned_min_similarity,
            aligned_min_correlation=settings.aligned_min_correlation,
        ),
    )
    # A confirmed review still counts: a merchandiser's word beats tonight's evidence. Pairs
    # of two variants of one product (the feed's item_group_id) are no duplicates at all.
    pairs_df, before_variants = counted(
        apply_decisions(evidence_df, decisions_df), "pairs_before_variants"
    )
    pairs_df = without_variant_pairs(pairs_df, item_groups(catalog_df))
    n_pairs = write(pairs_df, ctx.layout.duplicate_pairs)
    n_variant_pairs = before_variants.get["rows"] - n_pairs
    pairs_df = read(spark, ctx.layout.duplicate_pairs, "duplicates")
    cluster_counts = {"variant_members_detached": 0}
    clusters_df = duplicate_clusters(
        pairs_df,
        catalog_df,
        embeddings_df,
        run_id=ctx.run_id,
        chain_min_similarity=settings.chain_min_similarity,
        decisions_df=decisions_df,
        choices_df=choices_df,
        counts=cluster_counts,
    )
    n_members = write(clusters_df, ctx.layout.duplicate_clusters)
    written_df = read(spark, ctx.layout.duplicate_clusters, "duplicates")
    by_evidence = {
        f"pairs_{row.evidence.replace(',', '+')}": row["count"]
        for row in read(spark, ctx.layout.duplicate_pairs, "duplicates")
        .groupBy("evidence")
        .count()
        .collect()
    }
    return {
        "pairs": n_pairs,
        **dict(sorted(by_evidence.items())),
        "variant_pairs_dropped": n_variant_pairs,
        "variant_members_detached": cluster_counts["variant_members_detached"],
        "reviews_applied": decisions_df.count(),
        "canonical_choices": choices_df.count(),
        "clusters": written_df.select("cluster_id").distinct().count(),
        "listings_in_clusters": n_members,
        "shared_photo_groups": shared_df.select("group_id").distinct().count(),
        "listings_without_own_photo": n_shared,
    }
