"""Report: the merchandisers' page of the run (``duplicates.html`` and its CSVs).

The Spark queries choose what the page shows (the most confident clusters, mismatches and
shared photos) so that only those rows reach the driver; ``lookalike.stages.report_page``
writes the page itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from lookalike.stages.common import read
from lookalike.stages.report_page import (
    MEMBER_COLUMNS,
    MISMATCH_COLUMNS,
    SHARED_PHOTO_COLUMNS,
    STYLE_COLUMNS,
    write_duplicate_report,
)

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

log = logging.getLogger("lookalike")


REPORT_MAX_CLUSTERS = 500
REPORT_MAX_MISMATCHES = 200
# Shared photos (placeholders): the largest groups on the page, and per group the listings
# (by sku_id) in its CSV; the shared_photos table holds every listing.
REPORT_MAX_SHARED_GROUPS = 100
REPORT_MAX_SHARED_LISTINGS = 2000
# Same-style groups on the page: the largest, most cohesive first (the table holds all).
REPORT_MAX_STYLE_GROUPS = 50


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    clusters_df = read(spark, ctx.layout.duplicate_clusters, "report")
    catalog_df = read(spark, ctx.layout.catalog, "report")
    # Only the clusters the page shows reach the driver; the CSV export lists those too.
    shown_df = (
        clusters_df.select("cluster_id", "min_score")
        .distinct()
        .orderBy(F.col("min_score").desc(), "cluster_id")
        .limit(REPORT_MAX_CLUSTERS)
        .select("cluster_id")
    )
    members = (
        clusters_df.join(shown_df, "cluster_id")
        .join(catalog_df.select("sku_id", "title", "image_uri", "is_active"), "sku_id")
        .select(*MEMBER_COLUMNS)
        .toPandas()
    )
    # The most confident flags (no neighbor of their own category, most in the suggested one).
    flagged = (
        read(spark, ctx.layout.category_mismatches, "report")
        .orderBy(
            "own_share",
            F.col("suggested_share").desc(),
            F.col("suggested_score").desc(),
            "sku_id",
        )
        .limit(REPORT_MAX_MISMATCHES)
        .join(catalog_df.select("sku_id", "title", "image_uri"), "sku_id")
        .select(*MISMATCH_COLUMNS)
        .toPandas()
    )
    shared_df = read(spark, ctx.layout.shared_photos, "report")
    shown_groups_df = (
        shared_df.select("group_id", "n_listings")
        .distinct()
        .orderBy(F.col("n_listings").desc(), "group_id")
        .limit(REPORT_MAX_SHARED_GROUPS)
        .select("group_id")
    )
    shared = (
        shared_df.join(shown_groups_df, "group_id")
        .withColumn("nth", F.row_number().over(Window.partitionBy("group_id").orderBy("sku_id")))
        .filter(F.col("nth") <= REPORT_MAX_SHARED_LISTINGS)
        .join(catalog_df.select("sku_id", "title"), "sku_id", "left")
        .select(*SHARED_PHOTO_COLUMNS)
        .toPandas()
    )
    styles = None
    if ctx.layout.style_groups.exists():  # a run folder from before the styles stage has none
        styles_df = read(spark, ctx.layout.style_groups, "report")
        shown_styles_df = (
            styles_df.select("group_id", "group_size", "cohesion")
            .distinct()
            .orderBy(F.col("group_size").desc(), F.col("cohesion").desc(), "group_id")
            .limit(REPORT_MAX_STYLE_GROUPS)
            .select("group_id")
        )
        styles = (
            styles_df.join(shown_styles_df, "group_id")
            .join(catalog_df.select("sku_id", "title", "image_uri"), "sku_id", "left")
            .select(*STYLE_COLUMNS)
            .toPandas()
        )
    totals = {"SKUs in catalog": catalog_df.count()}
    paths = write_duplicate_report(
        members,
        ctx.layout.report_dir,
        run_id=ctx.run_id,
        max_clusters=REPORT_MAX_CLUSTERS,
        totals=totals,
        mismatches=flagged,
        shared_photos=shared,
        style_groups=styles,
    )
    log.info("merchandiser report: %s", paths.html)
    return {
        "clusters_shown": int(members["cluster_id"].nunique()),
        "listings_shown": len(members),
        "mismatches_shown": len(flagged),
        "shared_photo_groups_shown": int(shared["group_id"].nunique()),
        "style_groups_shown": 0 if styles is None else int(styles["group_id"].nunique()),
    }
