"""Embed: every catalog image through the backbone, inside a pandas UDF on the executors.

The UDF follows the Iterator pattern so that the model is built once per Python worker and
reused across its batches (and across tasks, since Spark reuses Python workers). Images are
read and decoded in the worker; a bad image becomes a reject reason, never a failed task.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pandas as pd
import torch
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lookalike.backbones import Embedder, load_embedder
from lookalike.config import EmbedSettings, ModelSettings
from lookalike.images import ImageLimits, ImageRejected, content_hash, decode_rgb, read_bytes

EMBED_RESULT = T.StructType(
    [
        T.StructField("content_hash", T.StringType()),
        T.StructField("model_id", T.StringType()),
        T.StructField("embedding", T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField("reject_reason", T.StringType()),
        T.StructField("reject_detail", T.StringType()),
    ]
)

EMBEDDINGS_COLUMNS = (
    "sku_id",
    "category",
    "is_active",
    "content_hash",
    "model_id",
    "embedding",
    "embedded_at",
)


@cache
def _worker_embedder(settings: ModelSettings) -> Embedder:
    # Cached per Python worker process: the model loads once, not once per batch or task.
    # Torch threads follow the task's cores, so concurrent workers do not oversubscribe.
    task = TaskContext.get()
    threads = settings.torch_threads or (task.cpus() if task else 1)
    torch.set_num_threads(max(1, threads))
    return load_embedder(settings)


def embed_uris(uris: pd.Series, embedder: Embedder, limits: ImageLimits) -> pd.DataFrame:
    """One result row per URI: hash + vector, or the reason the image was rejected."""
    hashes: list[str | None] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    images = []
    for uri in uris:
        try:
            data = read_bytes(uri, limits.max_bytes)
            image = decode_rgb(data, limits.max_pixels)
        except ImageRejected as rejected:
            hashes.append(None)
            reasons.append(rejected.reason)
            details.append(rejected.detail)
            images.append(None)
            continue
        hashes.append(content_hash(data))
        reasons.append(None)
        details.append(None)
        images.append(image)
    vectors = embedder.embed([im for im in images if im is not None]).numpy()
    rows = iter(vectors)
    embeddings = [None if im is None else next(rows) for im in images]
    return pd.DataFrame(
        {
            "content_hash": hashes,
            "model_id": [None if im is None else embedder.model_id for im in images],
            "embedding": embeddings,
            "reject_reason": reasons,
            "reject_detail": details,
        }
    )


def make_embed_udf(model: ModelSettings, embed: EmbedSettings):
    """The pandas UDF (image_uri) -> EMBED_RESULT for these settings."""
    limits = ImageLimits(max_bytes=embed.max_image_bytes, max_pixels=embed.max_image_pixels)

    @F.pandas_udf(EMBED_RESULT)
    def embed_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        embedder = _worker_embedder(model)
        for uris in batches:
            yield embed_uris(uris, embedder, limits)

    return embed_images


def with_embedding_results(
    catalog_df: DataFrame, model: ModelSettings, embed: EmbedSettings, n_partitions: int
) -> DataFrame:
    """The catalog plus an ``embedded`` struct column (vector or reject reason) per SKU."""
    embed_images = make_embed_udf(model, embed)
    return catalog_df.repartition(n_partitions).withColumn(
        "embedded", embed_images(F.col("image_uri"))
    )


def split_embedding_results(results_df: DataFrame, run_id: str) -> tuple[DataFrame, DataFrame]:
    """(embeddings_df, rejects_df) from ``with_embedding_results``."""
    ok_df = results_df.filter(F.col("embedded.reject_reason").isNull())
    embeddings_df = ok_df.select(
        "sku_id",
        "category",
        "is_active",
        F.col("embedded.content_hash").alias("content_hash"),
        F.col("embedded.model_id").alias("model_id"),
        F.col("embedded.embedding").alias("embedding"),
        F.current_timestamp().alias("embedded_at"),
    )
    rejects_df = results_df.filter(F.col("embedded.reject_reason").isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        "sku_id",
        F.lit("embed").alias("stage"),
        F.col("embedded.reject_reason").alias("reason"),
        F.col("embedded.reject_detail").alias("detail"),
        F.to_json(F.struct("sku_id", "category", "image_uri", "title", "is_active")).alias(
            "record"
        ),
    )
    return embeddings_df, rejects_df
