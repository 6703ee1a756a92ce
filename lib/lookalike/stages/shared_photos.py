"""Shared photos: one image shown by many unrelated listings (a placeholder, a logo, a blank).

Found first by the duplicates stage (the rule is in ``lookalike.stages.duplicates``): those
listings have no photo of their own, so they take part in no pair and get no similar items.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.stages.duplicate_pairs import descriptor_column, phash_pairs


def normalised_title(title: F.Column) -> F.Column:
    """Lower case, every run of characters other than letters and digits one space, trimmed;
    '' for no title. "Blue Shirt!" and "blue  shirt" are one title, "Blue shirt (2)" another."""
    return F.trim(F.regexp_replace(F.lower(F.coalesce(title, F.lit(""))), r"[^\p{L}\p{N}]+", " "))


def photo_groups(
    embeddings_df: DataFrame, *, max_distance: int, max_bucket: int, min_similarity: float
) -> DataFrame:
    """(sku_id, content_hash, group_key): each embedded listing with the image it shows.

    Listings share a group when their files have the same bytes (``content_hash``), or when a
    file is the same picture re-encoded: pHashes at most ``max_distance`` bits apart (a flat
    placeholder saved as JPEG moves 2-4 bits even at quality 95) and duplicate descriptors at
    least ``min_similarity`` alike, compared per distinct file with ``phash_pairs``. A file
    joins the most used file it is that close to (a star, so a series of small differences
    never chains); the group's key is that file's hash.
    """
    column = descriptor_column(embeddings_df)
    listings_df = embeddings_df.filter(F.col("content_hash").isNotNull())
    # One row per distinct file: a placeholder on 100,000 listings is one row here.
    files_df = (
        listings_df.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("content_hash")))
        .withColumn(
            "nth", F.row_number().over(Window.partitionBy("content_hash").orderBy("sku_id"))
        )
        .filter("nth = 1")
        .select(F.col("content_hash").alias("sku_id"), "n", "phash", "phash_mirrored", column)
        .localCheckpoint()
    )
    near_df = phash_pairs(
        files_df, max_distance=max_distance, max_bucket=max_bucket, min_similarity=min_similarity
    )
    sizes_df = files_df.select(F.col("sku_id").alias("other"), "n")
    links_df = (
        near_df.select(F.col("sku_id_a").alias("file"), F.col("sku_id_b").alias("other"))
        .unionByName(
            near_df.select(F.col("sku_id_b").alias("file"), F.col("sku_id_a").alias("other"))
        )
        .unionByName(files_df.select(F.col("sku_id").alias("file"), F.col("sku_id").alias("other")))
        .join(sizes_df, "other")
    )
    most_used_first = Window.partitionBy("file").orderBy(F.col("n").desc(), "other")
    keys_df = (
        links_df.withColumn("nth", F.row_number().over(most_used_first))
        .filter("nth = 1")
        .select(F.col("file").alias("content_hash"), F.col("other").alias("group_key"))
    )
    return listings_df.join(keys_df, "content_hash").select("sku_id", "content_hash", "group_key")


def photo_group_features(
    groups_df: DataFrame, catalog_df: DataFrame, *, min_listings: int = 2
) -> DataFrame:
    """One row per group of at least ``min_listings`` listings: ``group_key, n_listings,
    n_products, n_categories, n_titles`` (distinct non-empty normalised titles).

    The variants of one product (one ``item_group_id`` of the catalog: a dress in five sizes,
    one photo, titles "... S" to "... XL") are one product showing its own photo: they count
    once in ``n_products``, with their smallest title in ``n_titles``. Without item groups
    every listing is its own product."""
    sizes_df = (
        groups_df.groupBy("group_key")
        .agg(F.count(F.lit(1)).alias("n_listings"))
        .filter(F.col("n_listings") >= min_listings)
    )
    title = normalised_title(F.col("title"))
    product = F.concat(F.lit("sku:"), F.col("sku_id"))
    if "item_group_id" in catalog_df.columns:
        product = F.coalesce(F.concat(F.lit("group:"), F.col("item_group_id")), product)
    return (
        groups_df.join(sizes_df.select("group_key"), "group_key")
        .join(catalog_df.select("sku_id", "category", "title", product.alias("product")), "sku_id")
        .groupBy("group_key", "product")
        .agg(
            F.count(F.lit(1)).alias("listings"),
            F.collect_set("category").alias("categories"),
            # min skips NULL: a product without a title is no distinct title.
            F.min(F.when(title != "", title)).alias("title"),
        )
        .groupBy("group_key")
        .agg(
            F.sum("listings").alias("n_listings"),
            F.count(F.lit(1)).alias("n_products"),
            F.size(F.array_distinct(F.flatten(F.collect_list("categories")))).alias("n_categories"),
            # countDistinct skips NULL.
            F.countDistinct("title").alias("n_titles"),
        )
    )


def is_shared_photo(
    n_listings: F.Column,
    n_categories: F.Column,
    n_titles: F.Column,
    *,
    min_listings: int,
    min_title_share: float,
) -> F.Column:
    """The rule: a group this large whose listings differ, in category or in title, shows no
    one product. A seller's copies of one listing keep (nearly) one title in one category."""
    return (n_listings >= min_listings) & (
        (n_categories > 1) | (n_titles >= F.lit(min_title_share) * n_listings)
    )


def shared_photos(
    embeddings_df: DataFrame,
    catalog_df: DataFrame,
    *,
    run_id: str,
    min_listings: int,
    min_title_share: float,
    min_similarity: float,
    max_distance: int,
    max_bucket: int,
) -> DataFrame:
    """shared_photos rows: one per listing showing an image that many different listings
    show (SHARED_PHOTOS_SCHEMA). ``max_distance`` and ``max_bucket`` are the pHash search's
    (``phash_pairs``); ``min_similarity`` the descriptor similarity of a re-encoded copy."""
    groups_df = photo_groups(
        embeddings_df,
        max_distance=max_distance,
        max_bucket=max_bucket,
        min_similarity=min_similarity,
    )
    shared_df = photo_group_features(groups_df, catalog_df, min_listings=min_listings).filter(
        is_shared_photo(
            # Variants of one product are one listing here: their photo is their own.
            F.col("n_products"),
            F.col("n_categories"),
            F.col("n_titles"),
            min_listings=min_listings,
            min_title_share=min_title_share,
        )
    )
    return (
        groups_df.join(shared_df, "group_key")
        .join(catalog_df.select("sku_id", "category", "image_uri"), "sku_id")
        .select(
            "sku_id",
            "category",
            "image_uri",
            "content_hash",
            F.col("n_listings").cast("int").alias("n_listings"),
            F.col("n_categories").cast("int").alias("n_categories"),
            F.col("n_titles").cast("int").alias("n_titles"),
            F.concat(F.lit("photo-"), F.substring(F.sha1("group_key"), 1, 12)).alias("group_id"),
            F.lit(run_id).alias("run_id"),
        )
    )


SHARED_PHOTOS_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("image_uri", T.StringType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("n_listings", T.IntegerType()),
        T.StructField("n_categories", T.IntegerType()),
        T.StructField("n_titles", T.IntegerType()),
        T.StructField("group_id", T.StringType()),
        T.StructField("run_id", T.StringType()),
    ]
)


def without_shared_photos(df: DataFrame, shared_df: DataFrame) -> DataFrame:
    """``df`` (pairs: sku_id_a, sku_id_b; or listings: sku_id) without the listings of
    ``shared_df``: a placeholder is evidence of nothing."""
    skus_df = shared_df.select("sku_id").distinct()
    if "sku_id_a" not in df.columns:
        return df.join(skus_df, "sku_id", "left_anti")
    return df.join(skus_df.withColumnRenamed("sku_id", "sku_id_a"), "sku_id_a", "left_anti").join(
        skus_df.withColumnRenamed("sku_id", "sku_id_b"), "sku_id_b", "left_anti"
    )
