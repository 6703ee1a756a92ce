"""Ingest: read a catalog snapshot and split it into valid rows and rejects with a reason.

Nothing is dropped silently: every input row ends either in ``catalog`` or in ``rejects``,
and a reject carries a machine-readable reason, a human-readable detail and the raw row.

Ids and categories are trimmed of leading and trailing spaces (``" A1"`` is ``A1`` everywhere,
duplicate detection included) and must hold no control character (U+0000-U+001F, U+007F: a tab
or line break in an id is a broken feed, not padding). Titles are kept as sent, newlines and
all, except NUL (U+0000), which is removed: it means nothing in a title and breaks what reads
the tables downstream (PostgreSQL text refuses it, C-string tools cut the title there).

An optional ``item_group_id`` (Google Merchant's ``item_group_id``, Shopify's ``Handle``) groups
the variants of one product: the same dress in several sizes or colours. It is trimmed like an
id (blank: null, no group) and checked like one: a control character rejects the row as
``invalid_item_group_id``, a value over ``catalog.max_sku_id_length`` characters as
``item_group_id_too_long``. Variants are never each other's similar items nor duplicate
listings (``lookalike.stages.neighbors``, ``lookalike.stages.duplicates``). A catalog without
the column has no groups.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike.core import feeds
from lookalike.core.images import IMAGE_OUTSIDE_ROOTS, local_path
from lookalike.core.storage import Location
from lookalike.stages.common import read, write

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

log = logging.getLogger("lookalike")

# Feeds read as a shop sends them (lookalike.core.feeds), beside our own csv and parquet.
SHOP_FEED_FORMATS = (feeds.GOOGLE_MERCHANT, feeds.SHOPIFY)

REQUIRED_COLUMNS = ("sku_id", "category", "image_uri", "is_active")
# category_path: "Women > Dresses > Maxi", the category's place in the shop's tree (levels
# separated by ">"); where a small category borrows similar items (lookalike.stages.neighbors).
# item_group_id: the product a listing is a variant of (sizes, colours); see the docstring.
OPTIONAL_COLUMNS = ("title", "updated_at", "category_path", "item_group_id")

# Reason codes, checked in this order; a row is rejected for the first that applies.
MISSING_SKU_ID = "missing_sku_id"
INVALID_SKU_ID = "invalid_sku_id"
SKU_ID_TOO_LONG = "sku_id_too_long"
DUPLICATE_SKU_ID = "duplicate_sku_id"
MISSING_CATEGORY = "missing_category"
INVALID_CATEGORY = "invalid_category"
INVALID_ITEM_GROUP_ID = "invalid_item_group_id"
ITEM_GROUP_ID_TOO_LONG = "item_group_id_too_long"
MISSING_IMAGE_URI = "missing_image_uri"
INVALID_IS_ACTIVE = "invalid_is_active"
INVALID_UPDATED_AT = "invalid_updated_at"

CATALOG_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("image_uri", T.StringType(), False),
        T.StructField("title", T.StringType(), True),
        T.StructField("is_active", T.BooleanType(), False),
        T.StructField("updated_at", T.TimestampType(), True),
        T.StructField("category_path", T.StringType(), True),
        T.StructField("item_group_id", T.StringType(), True),
    ]
)

REJECTS_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("sku_id", T.StringType(), True),
        T.StructField("stage", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("detail", T.StringType(), True),
        T.StructField("record", T.StringType(), True),
    ]
)

# The C0 controls and DEL (Java regex, run by Spark).
_CONTROL_CHARACTER = r"[\x00-\x1f\x7f]"
# An id this long is a shifted column or an unclosed quote that swallowed the rows after it, not
# an id; it would also key every join and the storefront's lookups (catalog.max_sku_id_length).
DEFAULT_MAX_SKU_ID_LENGTH = 256

_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (as opposed to a bad row, which is rejected)."""


def read_catalog(spark: SparkSession, path: str, fmt: str = "auto") -> DataFrame:
    """The raw snapshot, every column as a string (validation parses them).

    ``fmt``: ``csv`` and ``parquet`` (the catalog's own columns, read by Spark), a shop's feed
    as it is (``google-merchant``, ``shopify``: read by ``lookalike.core.feeds`` into the same
    columns), or ``auto`` (from the file's name and first bytes).
    """
    if "://" not in path and not os.path.exists(path):
        raise CatalogError(f"catalog not found: {path}")
    if fmt == "auto":
        fmt = _detect_format(path)
    if fmt in SHOP_FEED_FORMATS:
        raw_df = _read_shop_feed(spark, path, fmt)
    elif fmt == "csv":
        # Seller titles contain commas, quotes and newlines.
        raw_df = spark.read.csv(path, header=True, multiLine=True, escape='"', inferSchema=False)
    else:
        raw_df = spark.read.parquet(path)
        # pandas writes nanosecond timestamps, which Spark reads only as longs (the session sets
        # spark.sql.legacy.parquet.nanosAsLong); the footers say which columns they are.
        for name in _nanosecond_timestamp_columns(path):
            raw_df = raw_df.withColumn(name, F.timestamp_micros(F.floor(F.col(name) / 1000)))
    if not raw_df.columns:
        raise CatalogError(f"catalog {path} is empty: no header row, no columns")
    missing = [c for c in REQUIRED_COLUMNS if c not in raw_df.columns]
    if missing:
        raise CatalogError(
            f"catalog {path} lacks required column(s) {', '.join(missing)}; "
            f"found: {', '.join(raw_df.columns)}"
        )
    for name in OPTIONAL_COLUMNS:
        if name not in raw_df.columns:
            raw_df = raw_df.withColumn(name, F.lit(None).cast("string"))
    return raw_df.select(
        *[F.col(c).cast("string").alias(c) for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)]
    )


def _detect_format(path: str) -> str:
    if path.rstrip("/").endswith(".parquet") or os.path.isdir(path):
        return "parquet"
    if "://" in path:  # not sniffed on object storage: name the format in catalog.format
        return "csv"
    if os.path.getsize(path) == 0:  # the csv reader says what an empty catalog is
        return "csv"
    try:
        return feeds.detect_format(path)
    except feeds.FeedError as err:
        raise CatalogError(str(err)) from None


def _read_shop_feed(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """A Google Merchant or Shopify feed, read on the driver into the catalog's raw columns."""
    with tempfile.TemporaryDirectory(prefix="lookalike-feed-") as scratch:
        local = path
        if "://" in path:
            local = os.path.join(scratch, Location.of(path).name)
            Location.of(local).write_bytes(Location.of(path).read_bytes())
        try:
            feed = feeds.read_feed_with_report(local, fmt)
        except feeds.FeedError as err:
            raise CatalogError(str(err)) from None
    for note in feed.notes:
        log.info("ingest: %s feed %s: %s", fmt, path, note)
    if feed.ignored_columns:
        log.info(
            "ingest: %s feed %s: columns not used: %s", fmt, path, ", ".join(feed.ignored_columns)
        )
    columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in feed.table.column_names]
    table = feed.table.select(columns)
    schema = T.StructType([T.StructField(c, T.StringType(), True) for c in columns])
    return spark.createDataFrame(table, schema=schema)


def _nanosecond_timestamp_columns(path: str) -> list[str]:
    schema = ds.dataset(path, format="parquet").schema  # reads footers, not data
    return [
        field.name
        for field in schema
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns"
    ]


def blank_to_null(col: Column) -> Column:
    """``col`` without leading and trailing spaces (U+0020 only: other whitespace is a control
    character or kept), null when nothing is left."""
    trimmed = F.trim(col)
    return F.when(trimmed == "", None).otherwise(trimmed)


def first_control_character(col: Column) -> Column:
    """The first control character (U+0000-U+001F, U+007F) of ``col``; "" when it has none."""
    return F.regexp_extract(col, _CONTROL_CHARACTER, 0)


def control_character_detail(name: str, col: Column) -> Column:
    """``sku_id holds control character U+0000 at position 3``: the character by its code point,
    never itself (the detail is read in terminals, logs and spreadsheets); the position counted
    in characters from 1."""
    char = first_control_character(col)
    return F.format_string(
        f"{name} holds control character U+%04X at position %d",
        F.ascii(char),
        F.position(char, col),
    )


def too_long_detail(name: str, max_length: int) -> Column:
    """``sku_id is 300 characters long, over catalog.max_sku_id_length 256``."""
    return F.format_string(
        f"{name} is %d characters long, over catalog.max_sku_id_length {max_length}",
        F.length(name),
    )


def without_nul(col: Column) -> Column:
    return F.regexp_replace(col, r"\x00", "")


def parse_is_active(col: Column) -> Column:
    value = F.lower(F.trim(col))
    return F.when(value.isin(*_TRUE), True).when(value.isin(*_FALSE), False)


def resolve_image_uris(base_dir: str, roots: list[str]):
    """A pandas UDF: (image_uri) -> struct(resolved uri, whether it is inside the roots).

    Lexical, so it needs no filesystem access: relative URIs are taken from ``base_dir``, and
    ``..`` segments are collapsed before the root check (``images/../../etc/passwd`` fails).
    """
    norm_roots = [_normalise(r, base_dir) for r in roots]

    @F.pandas_udf("resolved string, is_inside_roots boolean")
    def resolve(uris: pd.Series) -> pd.DataFrame:
        resolved = [None if u is None else _normalise(u, base_dir) for u in uris]
        inside = [
            r is not None and any(_is_under(r, root) for root in norm_roots) for r in resolved
        ]
        return pd.DataFrame({"resolved": resolved, "is_inside_roots": inside})

    return resolve


def _normalise(uri: str, base_dir: str) -> str:
    path = local_path(uri)
    if path is None:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.normpath(os.path.join(base_dir, path))


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def validate_catalog(
    raw_df: DataFrame,
    *,
    run_id: str,
    base_dir: str,
    image_roots: list[str],
    max_sku_id_length: int = DEFAULT_MAX_SKU_ID_LENGTH,
) -> tuple[DataFrame, DataFrame]:
    """Split a raw snapshot into (catalog_df, rejects_df); every input row lands in one.

    Checks, in order (a row gets the first reason that applies): ``missing_sku_id``,
    ``invalid_sku_id`` (a control character), ``sku_id_too_long`` (over ``max_sku_id_length``
    characters), ``duplicate_sku_id`` (every copy, ids compared trimmed), ``missing_category``,
    ``invalid_category``, ``invalid_item_group_id`` (a control character),
    ``item_group_id_too_long`` (over ``max_sku_id_length``), ``missing_image_uri``,
    ``image_outside_roots``, ``invalid_is_active``, ``invalid_updated_at``. A reject's
    ``record`` is the row as read, before trimming (JSON, so a control character is escaped
    there).
    """
    if max_sku_id_length < 1:
        raise ValueError(f"max_sku_id_length must be >= 1, got {max_sku_id_length}")
    roots = image_roots or [base_dir]
    resolve = resolve_image_uris(base_dir, roots)
    by_sku = Window.partitionBy("sku_id")
    # Optional: read_catalog adds it (null) to a feed without it; a hand-made frame may lack it.
    has_groups = "item_group_id" in raw_df.columns
    group_raw = F.col("item_group_id") if has_groups else F.lit(None).cast("string")
    checked_df = (
        raw_df.withColumn("record", F.to_json(F.struct(*raw_df.columns)))
        # The detail names a control character's position in the value as sent.
        .withColumn("sku_id_raw", F.col("sku_id"))
        .withColumn("category_raw", F.col("category"))
        .withColumn("sku_id", blank_to_null(F.col("sku_id")))
        .withColumn("category", blank_to_null(F.col("category")))
        .withColumn("item_group_id_raw", group_raw)
        .withColumn("item_group_id", blank_to_null(F.col("item_group_id_raw")))
        .withColumn("title", without_nul(F.col("title")))
        .withColumn("image_uri", blank_to_null(F.col("image_uri")))
        .withColumn("is_active_parsed", parse_is_active(F.col("is_active")))
        .withColumn("updated_at_raw", blank_to_null(F.col("updated_at")))
        .withColumn("updated_at", F.try_to_timestamp(F.col("updated_at_raw")))
        .withColumn("n_same_sku", F.count(F.lit(1)).over(by_sku))
        .withColumn("image", resolve(F.col("image_uri")))
        .withColumn(
            "reason",
            F.when(F.col("sku_id").isNull(), F.lit(MISSING_SKU_ID))
            .when(first_control_character(F.col("sku_id")) != "", F.lit(INVALID_SKU_ID))
            .when(F.length("sku_id") > max_sku_id_length, F.lit(SKU_ID_TOO_LONG))
            .when(F.col("n_same_sku") > 1, F.lit(DUPLICATE_SKU_ID))
            .when(F.col("category").isNull(), F.lit(MISSING_CATEGORY))
            .when(first_control_character(F.col("category")) != "", F.lit(INVALID_CATEGORY))
            .when(
                first_control_character(F.col("item_group_id")) != "", F.lit(INVALID_ITEM_GROUP_ID)
            )
            .when(F.length("item_group_id") > max_sku_id_length, F.lit(ITEM_GROUP_ID_TOO_LONG))
            .when(F.col("image_uri").isNull(), F.lit(MISSING_IMAGE_URI))
            .when(~F.col("image.is_inside_roots"), F.lit(IMAGE_OUTSIDE_ROOTS))
            .when(F.col("is_active_parsed").isNull(), F.lit(INVALID_IS_ACTIVE))
            .when(
                F.col("updated_at_raw").isNotNull() & F.col("updated_at").isNull(),
                F.lit(INVALID_UPDATED_AT),
            ),
        )
        .withColumn(
            "detail",
            F.when(F.col("reason") == MISSING_SKU_ID, F.lit("sku_id is empty"))
            .when(
                F.col("reason") == INVALID_SKU_ID,
                control_character_detail("sku_id", F.col("sku_id_raw")),
            )
            .when(
                F.col("reason") == SKU_ID_TOO_LONG,
                too_long_detail("sku_id", max_sku_id_length),
            )
            .when(
                F.col("reason") == DUPLICATE_SKU_ID,
                F.format_string(
                    "sku_id appears %d times in the snapshot; all copies rejected",
                    F.col("n_same_sku"),
                ),
            )
            .when(F.col("reason") == MISSING_CATEGORY, F.lit("category is empty"))
            .when(
                F.col("reason") == INVALID_CATEGORY,
                control_character_detail("category", F.col("category_raw")),
            )
            .when(
                F.col("reason") == INVALID_ITEM_GROUP_ID,
                control_character_detail("item_group_id", F.col("item_group_id_raw")),
            )
            .when(
                F.col("reason") == ITEM_GROUP_ID_TOO_LONG,
                too_long_detail("item_group_id", max_sku_id_length),
            )
            .when(F.col("reason") == MISSING_IMAGE_URI, F.lit("image_uri is empty"))
            .when(
                F.col("reason") == IMAGE_OUTSIDE_ROOTS,
                F.concat(
                    F.lit("resolves to "),
                    F.col("image.resolved"),
                    F.lit(f", outside the allowed image roots {roots}"),
                ),
            )
            .when(
                F.col("reason") == INVALID_IS_ACTIVE,
                F.concat(F.lit("is_active must be true or false, got "), F.col("is_active")),
            )
            .when(
                F.col("reason") == INVALID_UPDATED_AT,
                F.concat(F.lit("updated_at is not a timestamp: "), F.col("updated_at_raw")),
            ),
        )
    )
    catalog_df = checked_df.filter(F.col("reason").isNull()).select(
        "sku_id",
        "category",
        F.col("image.resolved").alias("image_uri"),
        "title",
        F.col("is_active_parsed").alias("is_active"),
        "updated_at",
        # Passed through (blank: none; read_catalog adds it when the feed has none);
        # neighbors normalises its levels.
        *[blank_to_null(F.col(c)).alias(c) for c in ("category_path",) if c in raw_df.columns],
        # Trimmed and checked above (null: no group).
        *(["item_group_id"] if has_groups else []),
    )
    rejects_df = checked_df.filter(F.col("reason").isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        "sku_id",
        F.lit("ingest").alias("stage"),
        "reason",
        "detail",
        "record",
    )
    return catalog_df, rejects_df


def catalog_base_dir(path: str) -> str:
    """Relative image URIs in a catalog file are relative to the file's folder."""
    local = local_path(path)
    if local is None:
        return path.rsplit("/", 1)[0]
    return str(Path(local).resolve().parent)


# --- the stage --------------------------------------------------------------------------------


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    """Validate the catalog snapshot into the run's ``catalog`` and ``rejects/ingest``.

    A snapshot with no rows, or none valid, raises ``CatalogError`` (exit code 1) after the
    rejects are written, so they can be read; the run's ``catalog`` is removed, so no later
    stage works from an earlier try's, and nothing is published.
    """
    path = ctx.catalog_path()
    settings = ctx.config.catalog
    raw_df = read_catalog(spark, path, settings.format)
    base_dir = catalog_base_dir(path)
    # Not persisted: recomputing the checks for the second output measured 3x faster than
    # caching them (ingest 10 s vs 30 s on the demo catalog).
    catalog_df, rejects_df = validate_catalog(
        raw_df,
        run_id=ctx.run_id,
        base_dir=base_dir,
        image_roots=image_roots(ctx, path),
        max_sku_id_length=settings.max_sku_id_length,
    )
    n_valid = write(catalog_df, ctx.layout.catalog)
    n_rejected = write(rejects_df, ctx.layout.rejects("ingest"))
    if n_valid == 0:
        ctx.layout.catalog.rmtree()
        if n_rejected == 0:
            raise CatalogError(
                f"catalog {path} has no rows: a header only, or an empty file; "
                "nothing was published, the tables keep the last published run"
            )
        # One row per reason reaches the driver, not the rejects.
        by_reason = (
            read(spark, ctx.layout.rejects("ingest"), "ingest")
            .groupBy("reason")
            .count()
            .orderBy(F.col("count").desc(), "reason")
            .collect()
        )
        reasons = ", ".join(f"{row['count']} {row['reason']}" for row in by_reason)
        raise CatalogError(
            f"all {n_rejected} rows of catalog {path} were rejected: {reasons} "
            f"(see {ctx.layout.rejects('ingest')}); nothing was published, the tables keep "
            "the last published run"
        )
    return {"rows_read": n_valid + n_rejected, "valid": n_valid, "rejected": n_rejected}


def image_roots(ctx: RunContext, catalog_path: str) -> list[str]:
    """Where images may live: the configured roots, or the catalog file's folder."""
    roots = [ctx.config.resolve(r) for r in ctx.config.catalog.image_roots]
    return roots or [catalog_base_dir(catalog_path)]
