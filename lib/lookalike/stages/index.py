"""Index: category shards of the run's vectors, built on the executors and saved as files.

A category is one shard, or ``n_parts`` sub-shards when it holds more than
``index.max_shard_size`` vectors (a SKU's sub-shard is a hash of its sku_id, so it does not
move when other SKUs come and go). A shard of at most ``index.exact_max_size`` vectors is
searched exactly (blocked matrix products, ``kind = exact``): below that size the products
are cheaper than building and querying trees; under ``auto`` one of at least
``index.auto_ivf_min_size`` is tried as IVF first and kept so where its tuned scan share
(``ann.ivf_pays``) beats the products. Larger ones get the index ``index.kind``
names (``ann.choose_kind``): ``auto`` (the default) and ``ivf`` a faiss IVF-Flat index
(``kind = ivf``, measured 3-10x faster than Annoy at higher recall on 1280-d vectors),
``annoy`` an Annoy forest (``kind = annoy``); ``exact`` makes every shard exact.

Each shard is two files plus one manifest row naming them with their checksum:
``<shard_id>.ann`` (Annoy), ``<shard_id>.faiss`` (faiss IVF) or ``<shard_id>.npy`` (float32
unit vectors), all memory-mapped by readers, and ``<shard_id>.ids.parquet`` (dense item id ->
sku_id, is_active). Items are added in sku_id order, Annoy with a fixed seed and one build
thread, IVF trained on a seeded sample with a seeded k-means, so a rebuild of the same
vectors gives the same files.

Queries pair shards: every SKU asks every (sub-)shard of its category (``pair_shards``), the
answers of the sub-shards are merged by score in Spark, so no task holds a whole category and
nothing reaches the driver but manifest rows.

An optional PCA projection (``index.pca_dim``, fitted on a sample of the run's vectors with
partial sums computed on the executors) is applied before indexing and stored beside the
shards as ``projection-<fingerprint>.npz`` with the model id it was fitted for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lookalike.config import IndexSettings
from lookalike.core.ann import (
    METRIC,
    SHARD_KINDS,
    Shard,
    build_shard,
    choose_kind,
    recall_of_shard,
    shard_id_for,
)
from lookalike.core.projection import Projection
from lookalike.core.storage import Location
from lookalike.stages.common import read, write

log = logging.getLogger("lookalike")

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

MANIFEST_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("shard_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        # Sub-shard number (0-based) of the category, and how many it has.
        T.StructField("part", T.IntegerType(), False),
        T.StructField("n_parts", T.IntegerType(), False),
        T.StructField("kind", T.StringType(), False),  # exact | annoy | ivf
        T.StructField("n_items", T.LongType(), False),
        T.StructField("n_active", T.LongType(), False),
        T.StructField("dim", T.IntegerType(), False),
        T.StructField("metric", T.StringType(), False),
        # 0 for exact and IVF shards (an IVF file holds its nlist and nprobe).
        T.StructField("n_trees", T.IntegerType(), False),
        T.StructField("model_id", T.StringType(), False),
        # The PCA projection's fingerprint ("none" without one); its file beside the shards.
        T.StructField("projection", T.StringType(), False),
        T.StructField("path", T.StringType(), False),
        T.StructField("ids_path", T.StringType(), False),
        T.StructField("checksum", T.StringType(), False),
    ]
)

# --- PCA projection --------------------------------------------------------------------------


def fit_projection(
    embeddings_df: DataFrame, *, dim: int, whiten: bool, sample: int, seed: int
) -> Projection:
    """PCA on a sample of about ``sample`` vectors; the sums are taken on the executors and
    only one (d x d) matrix per partition reaches the driver."""
    n_total, model_ids = embeddings_df.agg(
        F.count(F.lit(1)), F.array_sort(F.collect_set("model_id"))
    ).first()
    if n_total == 0:
        raise ValueError("index.pca_dim: no vectors to fit the projection on")
    sample_df = embeddings_df.select("embedding")
    if n_total > sample:
        sample_df = sample_df.sample(fraction=sample / n_total, seed=seed)

    def partial_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        count, total, outer = 0, None, None
        for batch in batches:
            if batch.empty:
                continue
            x = np.stack(batch["embedding"].to_numpy()).astype(np.float64)
            if total is None:
                total, outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
            count, total, outer = count + len(x), total + x.sum(0), outer + x.T @ x
        if count:
            yield pd.DataFrame(
                {"n": [count], "total": [total.tobytes()], "outer": [outer.tobytes()]}
            )

    schema = "n long, total binary, outer binary"
    parts = sample_df.mapInPandas(partial_sums, schema=schema).collect()
    n = sum(p["n"] for p in parts)
    d = len(parts[0]["total"]) // 8
    if dim > d:
        raise ValueError(f"index.pca_dim: {dim} is more than the vectors' {d} dimensions")
    total = sum(np.frombuffer(p["total"], np.float64) for p in parts)
    outer = sum(np.frombuffer(p["outer"], np.float64).reshape(d, d) for p in parts)
    mean = total / n
    covariance = outer / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    top = np.argsort(values)[::-1][:dim]
    components = vectors[:, top].T
    # A fixed sign per axis (largest coordinate positive): eigh may flip it between runs.
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(1)])
    components = components * signs[:, None]
    scale = 1.0 / np.sqrt(np.maximum(values[top], 1e-12)) if whiten else np.ones(dim)
    return Projection(
        mean.astype(np.float32),
        components.astype(np.float32),
        scale.astype(np.float32),
        ",".join(model_ids),
    )


# --- building --------------------------------------------------------------------------------


def with_parts(embeddings_df: DataFrame, max_shard_size: int) -> DataFrame:
    """Adds ``part`` and ``n_parts``: a category above max_shard_size is split by a hash of
    the sku_id into equal-sized sub-shards (a SKU keeps its part while others change)."""
    sizes_df = embeddings_df.groupBy("category").agg(
        F.greatest(F.lit(1), F.ceil(F.count(F.lit(1)) / F.lit(max_shard_size)))
        .cast("int")
        .alias("n_parts")
    )
    return embeddings_df.join(F.broadcast(sizes_df), "category").withColumn(
        "part", F.pmod(F.xxhash64("sku_id"), F.col("n_parts")).cast("int")
    )


def build_category_indexes(
    embeddings_df: DataFrame,
    *,
    index_dir: Location,
    settings: IndexSettings,
    run_id: str,
    projection: Projection | None = None,
) -> DataFrame:
    """One shard per category (or sub-shard), built in parallel on the executors; returns
    the manifest."""

    def build(members: pd.DataFrame) -> pd.DataFrame:
        category = members["category"].iloc[0]
        part, n_parts = int(members["part"].iloc[0]), int(members["n_parts"].iloc[0])
        shard_id = shard_id_for(category, part, n_parts)
        kind = choose_kind(len(members), settings)
        built = build_shard(
            members,
            shard_id=shard_id,
            index_dir=index_dir,
            settings=settings,
            kind=kind,
            projection=projection,
        )
        return pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "shard_id": shard_id,
                    "category": category,
                    "part": part,
                    "n_parts": n_parts,
                    "metric": METRIC,
                    "model_id": members["model_id"].iloc[0],
                    **built,
                }
            ]
        )[MANIFEST_SCHEMA.fieldNames()]

    return (
        embeddings_df.select("category", "sku_id", "is_active", "model_id", "embedding")
        .transform(lambda df: with_parts(df, settings.max_shard_size))
        .groupBy("category", "part")
        .applyInPandas(build, schema=MANIFEST_SCHEMA)
    )


# --- querying --------------------------------------------------------------------------------


# --- running queries on the executors --------------------------------------------------------

PAIR_COLUMNS = ("query", "target")


def pair_shards(manifest_df: DataFrame) -> list[tuple[dict, dict]]:
    """(query shard row, target shard row) for every two sub-shards of one category (each
    shard with itself too): the manifest's rows, one per shard, not the catalog."""
    rows = [r.asDict() for r in manifest_df.collect()]
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    pairs = [
        (query, target)
        for members in by_category.values()
        for query in members
        for target in members
    ]
    pairs.sort(key=_largest_first)
    return pairs


def _largest_first(pair: tuple[dict, dict]) -> tuple:
    # Largest work first, so the biggest tasks start first and the small ones fill in.
    query, target = pair
    return (-(query["n_items"] * target["n_items"]), query["shard_id"], target["shard_id"])


def map_shard_pairs(
    manifest_df: DataFrame,
    query: Callable[[Shard, Shard], pd.DataFrame],
    schema: T.StructType,
    pairs: list[tuple[dict, dict]] | None = None,
) -> DataFrame:
    """Run ``query(query_shard, target_shard) -> pd.DataFrame`` for every pair of shards of
    one category (or for the given ``pairs`` of manifest rows, e.g. across the categories of
    one parent), one Spark task per pair (largest first), files opened on the executor."""
    spark = manifest_df.sparkSession
    pairs = pair_shards(manifest_df) if pairs is None else sorted(pairs, key=_largest_first)
    if not pairs:
        return spark.createDataFrame([], schema)
    encoded = [Row(query=_encode(q), target=_encode(t)) for q, t in pairs]
    # One partition per pair: Spark hands them to free cores in order, largest first.
    pairs_df = spark.createDataFrame(
        spark.sparkContext.parallelize(encoded, len(encoded)),
        "query string, target string",
    )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for q_text, t_text in zip(batch["query"], batch["target"], strict=True):
                query_row, target_row = _decode(q_text), _decode(t_text)
                target = Shard.open(target_row)
                source = target
                try:
                    if query_row["shard_id"] != target_row["shard_id"]:
                        source = Shard.open(query_row)
                    yield query(source, target)
                finally:
                    target.close()
                    if source is not target:
                        source.close()

    return pairs_df.mapInPandas(run, schema=schema)


def map_shards(manifest_df: DataFrame, query, schema: T.StructType) -> DataFrame:
    """Run ``query(shard) -> pd.DataFrame`` once per shard, spread over the executors."""

    def run(manifests: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for manifest in manifests:
            for _, row in manifest.iterrows():
                shard = Shard.open(row)
                try:
                    yield query(shard)
                finally:
                    shard.close()

    n = max(1, manifest_df.sparkSession.sparkContext.defaultParallelism)
    return manifest_df.repartition(n).mapInPandas(run, schema=schema)


def _encode(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _decode(text: str) -> dict:
    return json.loads(text)


# --- measured recall -------------------------------------------------------------------------

RECALL_SCHEMA = T.StructType(
    [
        T.StructField("shard_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("kind", T.StringType(), False),
        T.StructField("queries", T.LongType(), False),
        T.StructField("hits", T.LongType(), False),
        T.StructField("wanted", T.LongType(), False),
    ]
)


def measure_recall(
    manifest_df: DataFrame, *, k: int, search_k: int, queries: int, seed: int
) -> DataFrame:
    """One row per shard: sampled queries and their hits among the exact top-k."""
    return map_shards(
        manifest_df,
        lambda shard: pd.DataFrame(
            [recall_of_shard(shard, k=k, search_k=search_k, queries=queries, seed=seed)]
        ),
        RECALL_SCHEMA,
    )


# --- the stage --------------------------------------------------------------------------------


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    embeddings_df = read(spark, ctx.layout.embeddings, "index")
    settings = ctx.config.index
    # Shards of an earlier try of this date (a category since gone) must not linger.
    ctx.layout.index_dir.rmtree()
    projection = None
    if settings.pca_dim:
        projection = fit_projection(
            embeddings_df,
            dim=settings.pca_dim,
            whiten=settings.pca_whiten,
            sample=settings.pca_sample,
            seed=settings.seed,
        )
        log.info(
            "index: PCA to %d axes, %s", settings.pca_dim, projection.save(ctx.layout.index_dir)
        )
    manifest_df = build_category_indexes(
        embeddings_df,
        index_dir=ctx.layout.index_dir,
        settings=settings,
        run_id=ctx.run_id,
        projection=projection,
    )
    n_shards = write(manifest_df, ctx.layout.index_manifest)
    totals = (
        read(spark, ctx.layout.index_manifest, "index")
        .agg(
            F.sum("n_items").alias("items"),
            *(F.count_if(F.col("kind") == kind).alias(f"{kind}_shards") for kind in SHARD_KINDS),
            F.count_distinct("category").alias("categories"),
        )
        .first()
    )
    return {
        "shards": n_shards,
        # Shards by kind: what index.kind: auto chose tonight, in the runs record.
        **{f"{kind}_shards": int(totals[f"{kind}_shards"] or 0) for kind in SHARD_KINDS},
        "categories": int(totals["categories"] or 0),
        "items": int(totals["items"] or 0),
    }
