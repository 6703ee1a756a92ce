"""Category mismatches: listings whose nearest neighbors overwhelmingly sit in another category.

The similar-items index is per category, so it cannot see across categories. This stage asks
a different question of the same vectors: for every active listing, which categories hold its
``k`` nearest neighbors among a *reference sample* of every category?

- The reference sample takes up to ``reference_per_category`` active listings of each
  category (the same ones every run: the smallest hashes of their sku_id), so a large category
  does not outvote a small one merely by being large. It is the only data brought to the
  driver: ``categories x reference_per_category`` vectors (100 x 200 x 1280 floats = 100 MB at
  most with the defaults), broadcast to the executors.
- Every active listing is compared with the sample by exact matrix products on the executors,
  in batches; itself excluded. It is flagged when at most ``max_own_share`` of its ``k``
  nearest references are of its own category (default: none of them) and one other category
  holds at least ``min_share`` of them (default: half); that category is suggested.

  Measured on clothing-small's test split (372 photos, 10 categories, the frozen ImageNet
  MobileNet-V2) with 10 listings moved to a random other category, mean of 10 plantings:
  the defaults flag 7.5 of the 10 (6.3 with the right suggestion) and 4.8 of the 362 correctly
  listed photos (mostly long sleeves that look like t-shirts); requiring a single category to
  hold 70% of the neighbors instead found 5.2 and falsely flagged 8.1. A fine-tuned model
  (``lookalike finetune --label category``) separates the categories better.
- The evidence kept with a flag: the suggested category's share, the own category's share,
  the mean similarity to the suggesting neighbors, the best similarity to the own category's
  references, and the neighbors themselves (sku ids and categories, nearest first).

Merchandisers' decisions in ``mismatch_reviews`` (``lookalike.reviews.record_mismatch_review``,
read only here) come last, each listing's latest one: ``category_ok`` (a false alarm) drops the
flag for as long as the listing keeps the category it had when decided; moved to another
category, it is a new question and may be flagged again. ``wrong_category`` (agreed) changes
nothing here: the listing stays flagged while tonight's evidence says so, until the catalog
changes its category. A decision never creates a flag the evidence does not raise. The stage
counts the flags it dropped (``suppressed_by_review``).

A limit worth knowing: listings mislabelled together (one seller putting twenty shoes under
"dress") vouch for each other once they make up more than ``1 - min_share`` of a listing's
nearest references; a small reference sample of the wrong category makes that less likely, not
impossible.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from lookalike import tables
from lookalike.config import MismatchSettings
from lookalike.core.ann import best_of
from lookalike.stages.common import read, write

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

MISMATCH_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("suggested_category", T.StringType(), False),
        # Share of the k nearest references in the suggested / in the listing's own category.
        T.StructField("suggested_share", T.FloatType(), False),
        T.StructField("own_share", T.FloatType(), False),
        # Mean cosine to the neighbors of the suggested category; best cosine to its own.
        T.StructField("suggested_score", T.FloatType(), False),
        T.StructField("own_best_score", T.FloatType(), True),
        # The two columns keep the spelling the table was published with (readers select them).
        T.StructField("neighbour_sku_ids", T.ArrayType(T.StringType(), False), False),
        T.StructField("neighbour_categories", T.ArrayType(T.StringType(), False), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)

WRONG_CATEGORY = "wrong_category"
CATEGORY_OK = "category_ok"
MISMATCH_DECISIONS = (WRONG_CATEGORY, CATEGORY_OK)

_QUERY_BATCH = 1024  # queries per matrix product: 1024 x references floats of scores


def reference_sample(embeddings_df: DataFrame, per_category: int) -> DataFrame:
    """Up to ``per_category`` active listings of each category, the same ones every run."""
    order = Window.partitionBy("category").orderBy(F.xxhash64("sku_id"), "sku_id")
    return (
        embeddings_df.filter(F.coalesce(F.col("is_active"), F.lit(False)))
        .withColumn("_rank", F.row_number().over(order))
        .filter(F.col("_rank") <= per_category)
        .select("sku_id", "category", "embedding")
    )


class References:
    """The reference sample as arrays, ready to score a batch of listings against."""

    def __init__(self, rows: pd.DataFrame) -> None:
        rows = rows.sort_values(["category", "sku_id"], kind="stable").reset_index(drop=True)
        self.sku_ids = rows["sku_id"].to_numpy(dtype=object)
        self.position = {sku_id: i for i, sku_id in enumerate(self.sku_ids)}
        self.categories = rows["category"].to_numpy(dtype=object)
        self.vectors = (
            np.stack(rows["embedding"].to_numpy()).astype(np.float32)
            if len(rows)
            else np.zeros((0, 0), np.float32)
        )

    def __len__(self) -> int:
        return len(self.sku_ids)


def flag_batch(
    batch: pd.DataFrame, refs: References, settings: MismatchSettings, run_id: str
) -> pd.DataFrame:
    """The flagged listings of one batch (sku_id, category, model_id, embedding), with evidence."""
    out: dict[str, list] = {name: [] for name in MISMATCH_SCHEMA.fieldNames()}
    if len(refs) <= settings.k or batch.empty:
        return pd.DataFrame(out)
    queries = np.stack(batch["embedding"].to_numpy()).astype(np.float32)
    scores = queries @ refs.vectors.T
    # A listing in the sample is no evidence about itself (a lookup per listing, not a
    # batch x sample comparison of strings).
    for row, sku_id in enumerate(batch["sku_id"]):
        if (position := refs.position.get(sku_id)) is not None:
            scores[row, position] = -np.inf
    k = settings.k
    # Nearest first; equal scores by sku_id, so the evidence reads the same every run.
    nearest = best_of(scores, k, tie_keys=refs.sku_ids)
    for row, (sku_id, category, model_id) in enumerate(
        zip(batch["sku_id"], batch["category"], batch["model_id"], strict=True)
    ):
        ids = nearest[row]
        cats = refs.categories[ids]
        values, counts = np.unique(cats[cats != category], return_counts=True)
        if not len(values):
            continue
        best = int(np.argmax(counts))  # np.unique sorts: ties go to the first category by name
        share, own_share = counts[best] / k, float(np.mean(cats == category))
        if own_share > settings.max_own_share or share < settings.min_share:
            continue
        suggested = values[best]
        own = refs.categories == category
        out["sku_id"].append(sku_id)
        out["category"].append(category)
        out["suggested_category"].append(suggested)
        out["suggested_share"].append(share)
        out["own_share"].append(own_share)
        out["suggested_score"].append(float(scores[row, ids[cats == suggested]].mean()))
        own_scores = scores[row, own]
        own_scores = own_scores[np.isfinite(own_scores)]
        out["own_best_score"].append(float(own_scores.max()) if len(own_scores) else None)
        out["neighbour_sku_ids"].append(list(refs.sku_ids[ids]))
        out["neighbour_categories"].append(list(cats))
        out["model_id"].append(model_id)
        out["run_id"].append(run_id)
    types = {"suggested_share": "float32", "own_share": "float32", "suggested_score": "float32"}
    return pd.DataFrame({c: pd.Series(v, dtype=types.get(c, object)) for c, v in out.items()})


def category_mismatches(
    embeddings_df: DataFrame, *, settings: MismatchSettings, run_id: str
) -> DataFrame:
    """One row per active listing whose nearest references mostly lie in another category."""
    spark = embeddings_df.sparkSession
    sample = reference_sample(embeddings_df, settings.reference_per_category).toPandas()
    refs = spark.sparkContext.broadcast(References(sample))

    def flag(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for start in range(0, len(batch), _QUERY_BATCH):
                part = batch.iloc[start : start + _QUERY_BATCH]
                yield flag_batch(part, refs.value, settings, run_id)[MISMATCH_SCHEMA.fieldNames()]

    return (
        embeddings_df.filter(F.coalesce(F.col("is_active"), F.lit(False)))
        .select("sku_id", "category", "model_id", "embedding")
        .mapInPandas(flag, schema=MISMATCH_SCHEMA)
    )


# --- merchandisers' decisions ----------------------------------------------------------------


def latest_mismatch_decisions(reviews_df: DataFrame) -> DataFrame:
    """(sku_id, category, decision): each listing's latest decision, with the category it had.

    Per listing, not per (listing, category): a later answer replaces an earlier one, whatever
    category either was given in.
    """
    latest_first = Window.partitionBy("sku_id").orderBy(F.col("decided_at").desc())
    return (
        reviews_df.filter(F.col("decision").isin(*MISMATCH_DECISIONS))
        .withColumn("_n", F.row_number().over(latest_first))
        .filter("_n = 1")
        .select("sku_id", "category", "decision")
    )


def without_false_alarms(flagged_df: DataFrame, decisions_df: DataFrame) -> DataFrame:
    """The flags a merchandiser has not already called a false alarm in the same category."""
    false_alarms = decisions_df.filter(F.col("decision") == CATEGORY_OK).select(
        "sku_id", "category"
    )
    return flagged_df.join(F.broadcast(false_alarms), ["sku_id", "category"], "left_anti")


def _mismatch_reviews(spark: SparkSession, ctx: RunContext) -> DataFrame | None:
    """The merchandisers' ``mismatch_reviews`` table (read only); None before the first one."""
    return tables.read_with_spark(spark, ctx.layout.table("mismatch_reviews"))


# --- the stage --------------------------------------------------------------------------------


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    settings = ctx.config.mismatches
    embeddings_df = read(spark, ctx.layout.embeddings, "mismatches")
    if settings.enabled:
        flagged_df = category_mismatches(embeddings_df, settings=settings, run_id=ctx.run_id)
    else:  # an empty table, so the report and the published table still say "none"
        flagged_df = spark.createDataFrame([], MISMATCH_SCHEMA)
    reviews_df = _mismatch_reviews(spark, ctx)
    n_suppressed = 0
    if reviews_df is not None:
        # The flags are few; kept, they are counted before and after without a second search.
        flagged_df = flagged_df.localCheckpoint()
        n_before = flagged_df.count()
        flagged_df = without_false_alarms(flagged_df, latest_mismatch_decisions(reviews_df))
    n_flagged = write(flagged_df, ctx.layout.category_mismatches)
    if reviews_df is not None:
        n_suppressed = n_before - n_flagged
    written_df = read(spark, ctx.layout.category_mismatches, "mismatches")
    return {
        "flagged": n_flagged,
        "suppressed_by_review": n_suppressed,
        "categories_with_flags": written_df.select("category").distinct().count(),
    }
