"""Embed: every catalog image through the backbone, inside pandas UDFs on the executors.

The UDFs follow the Iterator pattern so that the model is built once per Python worker and
reused across its batches (and across tasks, since Spark reuses Python workers). Images are
read and decoded in the worker; a bad image becomes a reject reason, never a failed task.

Incremental runs read as little as they can, in three passes:

1. ``with_image_versions`` asks each image's listing (size, modification time, inode: a
   ``stat``, or the object store's file info) without reading a byte. A SKU whose image URI
   and version are those of its stored vector under the same model id reuses it
   (``reuse_listed_vectors``): an unchanged night reads no image at all.
2. The images whose version changed are read and hashed (``with_content_hashes``); a content
   hash that already has a vector under the model id reuses it (``reuse_stored_vectors``: a
   file touched but not changed, a photo moved to another URI, a copy under another SKU).
3. Only the rest go through the network.

The stage's counts say how many vectors were reused by listing and by content, how many
images were hashed and how many bytes that read.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import pandas as pd
import torch
from pyspark import Accumulator, AccumulatorParam, StorageLevel, TaskContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lookalike.config import ConfigError, EmbedSettings, ModelSettings
from lookalike.core import backbones
from lookalike.core.backbones import Embedder, load_embedder
from lookalike.core.embedding import (
    decode_threads,
    embed_uris,
    peak_rss_bytes,
)
from lookalike.core.images import (
    ImageLimits,
    ImageRejected,
    content_hash,
    http_counts,
    image_version,
    local_path,
    read_bytes,
)
from lookalike.layout import RunLayout
from lookalike.stages.common import counted, read, union, write
from lookalike.stages.ingest import image_roots

log = logging.getLogger("lookalike")

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

VERSION_RESULT = T.StructType(
    [
        T.StructField("image_version", T.StringType()),
        T.StructField("reject_reason", T.StringType()),
        T.StructField("reject_detail", T.StringType()),
    ]
)

HASH_RESULT = T.StructType(
    [
        T.StructField("content_hash", T.StringType()),
        T.StructField("reject_reason", T.StringType()),
        T.StructField("reject_detail", T.StringType()),
    ]
)

EMBED_RESULT = T.StructType(
    [
        T.StructField("content_hash", T.StringType()),
        T.StructField("model_id", T.StringType()),
        T.StructField("embedding", T.ArrayType(T.FloatType(), containsNull=False)),
        # The duplicate descriptor: R-MAC of the whole frame, of the trimmed frame and of the
        # zoomed centre, end to end (lookalike.core.rmac.duplicate_descriptors).
        T.StructField("rmac", T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField("phash", T.LongType()),
        T.StructField("phash_mirrored", T.LongType()),
        # The grey thumbnail that settles undecided duplicate pairs (lookalike.core.thumbnails).
        T.StructField("thumbnail", T.BinaryType()),
        T.StructField("reject_reason", T.StringType()),
        T.StructField("reject_detail", T.StringType()),
        # The listing of the file the bytes came from (lookalike.core.images.read_image).
        T.StructField("image_version", T.StringType()),
    ]
)

EMBEDDINGS_COLUMNS = (
    "sku_id",
    "category",
    "is_active",
    "content_hash",
    # Where the vector's image was read and what its listing said (image_version): an
    # unchanged URI and version reuse the vector without reading the image.
    "image_uri",
    "image_version",
    "model_id",
    "embedding",
    "rmac",
    "phash",
    "phash_mirrored",
    "thumbnail",
    "embedded_at",
)


class MaxParam(AccumulatorParam):
    """An accumulator that keeps the largest value any task reported."""

    def zero(self, value: int) -> int:
        return 0

    def addInPlace(self, value1: int, value2: int) -> int:  # noqa: N802 (PySpark's name)
        return max(value1, value2)


class CountsParam(AccumulatorParam):
    """An accumulator of named counts, added key by key."""

    def zero(self, value: dict) -> dict:
        return dict.fromkeys(value, 0)

    def addInPlace(self, value1: dict, value2: dict) -> dict:  # noqa: N802 (PySpark's name)
        return {k: value1.get(k, 0) + value2.get(k, 0) for k in value1.keys() | value2.keys()}


@dataclass(frozen=True)
class ReadCounts:
    """What the stage's tasks read: images and bytes hashed, HTTP downloads, 304s and bytes."""

    hashed: Accumulator
    bytes_hashed: Accumulator
    http: Accumulator

    @classmethod
    def of(cls, spark: SparkSession) -> ReadCounts:
        sc = spark.sparkContext
        zero = dict.fromkeys(http_counts(), 0)
        return cls(sc.accumulator(0), sc.accumulator(0), sc.accumulator(zero, CountsParam()))

    @contextmanager
    def http_of_batch(self) -> Iterator[None]:
        """Adds what this worker fetched over HTTP while the block ran to the run's counts."""
        before = http_counts()
        yield
        after = http_counts()
        self.http.add({k: after[k] - before[k] for k in after})

    def stats(self) -> dict[str, int]:
        http = self.http.value
        return {
            "hashed": self.hashed.value,
            "bytes_hashed": self.bytes_hashed.value,
            "http_downloads": http["downloads"],
            "http_not_modified": http["not_modified"],
            "http_bytes": http["bytes_downloaded"],
        }


@cache
def _worker_embedder(settings: ModelSettings) -> Embedder:
    # Cached per Python worker process: the model loads once, not once per batch or task.
    # Torch threads follow the task's cores, so concurrent workers do not oversubscribe.
    task = TaskContext.get()
    threads = settings.torch_threads or (task.cpus() if task else os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    gpus = task.resources().get("gpu") if task else None
    return load_embedder(settings, gpu_addresses=gpus.addresses if gpus else ())


# Images on object storage or HTTP(S) are waited for, not computed: this many at a time per
# worker (the HTTP policy's per-host rate still applies).
_REMOTE_READ_THREADS = 16


def _io_threads(uris: pd.Series, threads: int = 1) -> int:
    """``threads``, or more where any image is remote (a round trip each)."""
    if any(local_path(uri) is None for uri in uris):
        return max(threads, _REMOTE_READ_THREADS)
    return threads


def _mapped(function, items: list, threads: int) -> list:
    if threads <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, items))


def make_embed_udf(
    model: ModelSettings,
    embed: EmbedSettings,
    limits: ImageLimits,
    peak_rss: Accumulator | None = None,
    reads: ReadCounts | None = None,
):
    """The pandas UDF (image_uri) -> EMBED_RESULT for these settings."""

    @F.pandas_udf(EMBED_RESULT)
    def embed_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for uris in batches:
            # Built on the first batch (an empty partition loads nothing), then cached.
            embedder = _worker_embedder(model)
            threads = _io_threads(uris, decode_threads(embed.decode_threads, embedder))
            with reads.http_of_batch() if reads else nullcontext():
                result = embed_uris(uris, embedder, limits, threads)
            yield result
            if peak_rss is not None:
                peak_rss.add(peak_rss_bytes())

    return embed_images


def make_version_udf(limits: ImageLimits, reads: ReadCounts | None = None):
    """The pandas UDF (image_uri, stored image_version) -> VERSION_RESULT: what the listing
    says, no byte read (a conditional GET for an HTTP image with a stored ETag)."""

    def version(item: tuple[str, str | None]) -> tuple[str | None, str | None, str | None]:
        uri, stored = item
        try:
            return image_version(uri, limits, stored), None, None
        except ImageRejected as rejected:
            return None, rejected.reason, rejected.detail

    @F.pandas_udf(VERSION_RESULT)
    def list_images(uris: pd.Series, stored: pd.Series) -> pd.DataFrame:
        items = list(zip(uris, stored.where(stored.notna(), None), strict=True))
        with reads.http_of_batch() if reads else nullcontext():
            rows = _mapped(version, items, _io_threads(uris))
        return pd.DataFrame(rows, columns=[f.name for f in VERSION_RESULT.fields], dtype=object)

    return list_images


def make_hash_udf(limits: ImageLimits, reads: ReadCounts | None = None):
    """The pandas UDF (image_uri) -> HASH_RESULT: the bytes' identity, or why they are bad.
    ``reads`` counts the images and bytes read (once per image: the caller persists)."""

    def hashed(uri: str) -> tuple[str | None, str | None, str | None, int]:
        try:
            data = read_bytes(uri, limits)
        except ImageRejected as rejected:
            return None, rejected.reason, rejected.detail, 0
        return content_hash(data), None, None, len(data)

    @F.pandas_udf(HASH_RESULT)
    def hash_images(uris: pd.Series) -> pd.DataFrame:
        with reads.http_of_batch() if reads else nullcontext():
            rows = _mapped(hashed, list(uris), _io_threads(uris))
        if reads is not None:
            reads.hashed.add(len(rows))
            reads.bytes_hashed.add(sum(row[3] for row in rows))
        return pd.DataFrame(
            [row[:3] for row in rows], columns=[f.name for f in HASH_RESULT.fields], dtype=object
        )

    return hash_images


def with_embedding_results(
    catalog_df: DataFrame,
    model: ModelSettings,
    embed: EmbedSettings,
    n_partitions: int,
    limits: ImageLimits | None = None,
    peak_rss: Accumulator | None = None,
    reads: ReadCounts | None = None,
) -> DataFrame:
    """The catalog plus an ``embedded`` struct column (vector or reject reason) per SKU."""
    limits = limits or ImageLimits(embed.max_image_bytes, embed.max_image_pixels)
    embed_images = make_embed_udf(model, embed, limits, peak_rss, reads)
    return catalog_df.repartition(n_partitions).withColumn(
        "embedded", embed_images(F.col("image_uri"))
    )


def with_image_versions(
    catalog_df: DataFrame,
    limits: ImageLimits,
    stored_df: DataFrame | None = None,
    reads: ReadCounts | None = None,
) -> DataFrame:
    """The catalog plus a ``listed`` struct column (image version or reject reason) per SKU.
    ``stored_df``'s versions (by SKU and URI) are what an HTTP image is asked against."""
    if stored_df is None:
        with_stored = catalog_df.withColumn("stored_version", F.lit(None).cast("string"))
    else:
        stored = stored_df.select(
            "sku_id", "image_uri", F.col("image_version").alias("stored_version")
        ).dropDuplicates(["sku_id", "image_uri"])
        with_stored = catalog_df.join(stored, ["sku_id", "image_uri"], "left")
    list_images = make_version_udf(limits, reads)
    return with_stored.withColumn(
        "listed", list_images(F.col("image_uri"), F.col("stored_version"))
    ).drop("stored_version")


def listed_images(versioned_df: DataFrame) -> DataFrame:
    """The rows of ``with_image_versions`` whose image is there, with their ``image_version``."""
    return versioned_df.filter(F.col("listed.reject_reason").isNull()).select(
        *[c for c in versioned_df.columns if c != "listed"],
        F.col("listed.image_version").alias("image_version"),
    )


def with_content_hashes(
    catalog_df: DataFrame, limits: ImageLimits, reads: ReadCounts | None = None
) -> DataFrame:
    """The catalog plus a ``hashed`` struct column (content hash or reject reason) per SKU."""
    return catalog_df.withColumn("hashed", make_hash_udf(limits, reads)(F.col("image_uri")))


def split_embedding_results(results_df: DataFrame, run_id: str) -> tuple[DataFrame, DataFrame]:
    """(embeddings_df, rejects_df) from ``with_embedding_results``."""
    ok_df = results_df.filter(F.col("embedded.reject_reason").isNull())
    embeddings_df = ok_df.select(
        "sku_id",
        "category",
        "is_active",
        F.col("embedded.content_hash").alias("content_hash"),
        "image_uri",
        _image_version(results_df),
        F.col("embedded.model_id").alias("model_id"),
        F.col("embedded.embedding").alias("embedding"),
        F.col("embedded.rmac").alias("rmac"),
        F.col("embedded.phash").alias("phash"),
        F.col("embedded.phash_mirrored").alias("phash_mirrored"),
        F.col("embedded.thumbnail").alias("thumbnail"),
        F.current_timestamp().alias("embedded_at"),
    )
    return embeddings_df, image_rejects(results_df, "embedded", run_id)


def _image_version(df: DataFrame) -> Column:
    # The version of the file read; the listing's where the reader knew none.
    read = F.col("embedded.image_version")
    listed = F.col("image_version") if "image_version" in df.columns else F.lit(None)
    return F.coalesce(read, listed.cast("string")).alias("image_version")


def image_rejects(results_df: DataFrame, column: str, run_id: str) -> DataFrame:
    """Reject rows (the rejects table's columns) of the rows whose ``column`` has a reason."""
    return results_df.filter(F.col(f"{column}.reject_reason").isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        "sku_id",
        F.lit("embed").alias("stage"),
        F.col(f"{column}.reject_reason").alias("reason"),
        F.col(f"{column}.reject_detail").alias("detail"),
        F.to_json(F.struct("sku_id", "category", "image_uri", "title", "is_active")).alias(
            "record"
        ),
    )


def reuse_stored_vectors(
    hashed_df: DataFrame, stored_df: DataFrame, model_id: str
) -> tuple[DataFrame, DataFrame]:
    """Split readable hashed catalog rows into (reused embeddings, rows still to embed).

    ``stored_df`` holds earlier vectors (sku_id, content_hash, model_id, embedding,
    embedded_at). A SKU reuses its vector when its image bytes hash the same under the same
    model id: the vector is a function of exactly those, so reuse is exact. Rows whose image
    could not be read are in neither output (they are rejects, see ``image_rejects``).

    The vectors are only streamed once, through an inner join against the (small, broadcast)
    hashed catalog; deciding what is left to embed reads the stored keys alone.
    """
    keys = ["sku_id", "content_hash"]
    stored = stored_df.filter(F.col("model_id") == model_id)
    readable = hashed_df.filter(F.col("hashed.reject_reason").isNull()).select(
        *[c for c in hashed_df.columns if c != "hashed"],
        F.col("hashed.content_hash").alias("content_hash"),
    )
    if "image_version" not in readable.columns:
        readable = readable.withColumn("image_version", F.lit(None).cast("string"))
    # The catalog's own columns and where tonight's image is come from tonight, the rest from
    # the stored row.
    tonight = ("category", "is_active", "image_uri", "image_version")
    reused_df = stored.select(*[c for c in EMBEDDINGS_COLUMNS if c not in tonight]).join(
        F.broadcast(readable.select(*keys, *tonight)), keys
    )
    todo_df = readable.join(stored.select(*keys), keys, "left_anti").drop("content_hash")
    return reused_df.select(*EMBEDDINGS_COLUMNS), todo_df


def reuse_listed_vectors(
    listed_df: DataFrame, stored_df: DataFrame, model_id: str
) -> tuple[DataFrame, DataFrame]:
    """Split ``listed_images`` rows into (reused embeddings, rows whose image may have changed).

    A SKU reuses its stored vector, without its image being read, when the image URI and the
    listing's version are the stored ones under the same model id.
    """
    keys = ["sku_id", "image_uri", "image_version"]
    stored = stored_df.filter((F.col("model_id") == model_id) & F.col("image_version").isNotNull())
    tonight = ("category", "is_active")
    reused_df = stored.select(*[c for c in EMBEDDINGS_COLUMNS if c not in tonight]).join(
        F.broadcast(listed_df.select(*keys, *tonight)), keys
    )
    changed_df = listed_df.join(stored.select(*keys), keys, "left_anti")
    return reused_df.select(*EMBEDDINGS_COLUMNS), changed_df


# --- the stage --------------------------------------------------------------------------------


def _stored_vectors(spark: SparkSession, ctx: RunContext) -> DataFrame | None:
    """The vectors of the latest earlier run, if any (``reuse_stored_vectors`` keeps those of
    the current model)."""
    earlier = [
        run.name
        for run in (ctx.layout.root / "runs").iterdir()
        if run.name < ctx.run_id and (run / "embeddings" / "_SUCCESS").exists()
    ]
    if not earlier:
        return None
    stored_df = spark.read.parquet(str(RunLayout(ctx.layout.root, earlier[-1]).embeddings))
    for name in ("image_uri", "image_version"):
        if name not in stored_df.columns:  # vectors of a release before listings: hashed
            stored_df = stored_df.withColumn(name, F.lit(None).cast("string"))
    missing = set(EMBEDDINGS_COLUMNS) - set(stored_df.columns)
    if missing:
        log.info("embed: run %s lacks %s; embedding everything", earlier[-1], sorted(missing))
        return None
    log.info("embed: reusing unchanged vectors of run %s", earlier[-1])
    return stored_df


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    model, settings = ctx.config.model, ctx.config.embed
    try:
        spec = backbones.resolve_model(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    catalog_df = read(spark, ctx.layout.catalog, "embed")
    roots = tuple(image_roots(ctx, ctx.catalog_path()))
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        roots=roots,
        http=ctx.config.http.policy(roots, settings.max_image_bytes),
    )
    peak_rss = spark.sparkContext.accumulator(0, MaxParam())
    reads = ReadCounts.of(spark)
    stored_df = _stored_vectors(spark, ctx) if settings.incremental else None
    vectors: list[DataFrame] = []
    rejects: list[DataFrame] = []
    persisted: list[DataFrame] = []
    reused_listed = reused_hashed = None
    try:
        # What each image's listing says, no byte read; persisted, so each file is asked once.
        versioned_df = with_image_versions(catalog_df, limits, stored_df, reads).persist()
        persisted.append(versioned_df)
        rejects.append(image_rejects(versioned_df, "listed", ctx.run_id))
        todo_df = listed_images(versioned_df)
        if stored_df is not None:
            if settings.reuse_by_listing:
                reused_df, todo_df = reuse_listed_vectors(todo_df, stored_df, spec.model_id)
                reused_df, reused_listed = counted(reused_df, "reused_by_listing")
                vectors.append(reused_df)
            # Only the images whose listing changed are read, hashed and looked up by content.
            hashed_df = with_content_hashes(todo_df, limits, reads).persist()
            persisted.append(hashed_df)
            reused_df, todo_df = reuse_stored_vectors(hashed_df, stored_df, spec.model_id)
            reused_df, reused_hashed = counted(reused_df, "reused_by_content")
            vectors.append(reused_df)
            rejects.append(image_rejects(hashed_df, "hashed", ctx.run_id))
        n_todo = todo_df.count()
        embedded = None
        if n_todo:
            cores = spark.sparkContext.defaultParallelism
            # Enough partitions to keep every core busy, few enough that each holds several
            # batches.
            n_partitions = max(1, min(cores * 4, math.ceil(n_todo / model.batch_size)))
            # Persisted so that each image is read and embedded once for both outputs.
            results_df = with_embedding_results(
                todo_df, model, settings, n_partitions, limits, peak_rss, reads
            ).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(results_df)
            new_df, new_rejects_df = split_embedding_results(results_df, ctx.run_id)
            new_df, embedded = counted(new_df, "embedded")
            vectors.append(new_df)
            rejects.append(new_rejects_df)
        # An empty catalog (ingest refuses one; a hand-made run folder may hold one) gives
        # empty outputs with the columns of real ones.
        no_vectors_df, no_rejects_df = split_embedding_results(
            catalog_df.filter(F.lit(False)).withColumn("embedded", F.lit(None).cast(EMBED_RESULT)),
            ctx.run_id,
        )
        n_vectors = write(union(vectors, no_vectors_df), ctx.layout.embeddings)
        n_rejected = write(union(rejects, no_rejects_df), ctx.layout.rejects("embed"))
    finally:
        for df in persisted:
            df.unpersist()
    n_embedded = embedded.get["rows"] if embedded else 0
    return {
        # Every catalog row is a vector or a reject: nothing is dropped on the way.
        "images": n_vectors + n_rejected,
        "vectors": n_vectors,
        "embedded": n_embedded,
        "reused": n_vectors - n_embedded,
        "reused_by_listing": reused_listed.get["rows"] if reused_listed else 0,
        "reused_by_content": reused_hashed.get["rows"] if reused_hashed else 0,
        **reads.stats(),
        "rejected": n_rejected,
        "worker_peak_rss_mb": round(peak_rss.value / 2**20),
    }
