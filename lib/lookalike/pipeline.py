"""The nightly run's stages: extract -> transform -> load, one function per stage.

Each stage reads the previous stages' Parquet output under the run's folder and writes its
own, so a stage can run alone (``spark-submit jobs/<stage>.py``) or all of them in one
session (``lookalike nightly``). A stage returns its counts; ``run_stage`` records them with
the stage's time in ``runs/<run_id>/stats/<stage>.json``, which the publish stage turns into
the ``runs`` record.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import reduce

import pyarrow as pa
from deltalake import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from lookalike import (
    catalog,
    duplicates,
    embed,
    faults,
    index,
    mismatch,
    neighbors,
    quality,
    report,
    tables,
)
from lookalike.config import Config, ConfigError
from lookalike.core import backbones
from lookalike.core.images import ImageLimits
from lookalike.core.storage import Location
from lookalike.layout import STAGES, RunLayout

log = logging.getLogger("lookalike")


@dataclass(frozen=True)
class RunContext:
    config: Config
    run_date: date

    @property
    def run_id(self) -> str:
        # One run per run date: a rerun of a date replaces that date's outputs.
        return self.run_date.isoformat()

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.config.output_root, self.run_id)

    def catalog_path(self) -> str:
        """The configured catalog (``catalog.path``, or ``--catalog`` on the command line)."""
        if not self.config.catalog.path:
            raise ConfigError(
                "catalog.path is not set: set catalog.path in the configuration or pass "
                "--catalog path/to/catalog.csv; `make demo` generates the bundled demo catalog "
                "(var/demo_catalog) and runs the nightly job on it"
            )
        return self.config.resolve(self.config.catalog.path)


@dataclass(frozen=True)
class StageResult:
    stage: str
    counts: dict[str, int]
    seconds: float


def _counted(df: DataFrame, name: str) -> tuple[DataFrame, Observation]:
    """``df`` counting its rows as they pass: the count is read after the next action."""
    observation = Observation(name)
    return df.observe(observation, F.count(F.lit(1)).alias("rows")), observation


def _write(df: DataFrame, path: Location) -> int:
    """Write ``df`` as the Parquet folder ``path``; its row count, taken while writing."""
    df, written = _counted(df, path.name)
    df.write.mode("overwrite").parquet(str(path))
    return written.get["rows"]


def _read(spark: SparkSession, path: Location, stage: str) -> DataFrame:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run the stage that writes it before '{stage}'"
        )
    return spark.read.parquet(str(path))


def _image_roots(ctx: RunContext, catalog_path: str) -> list[str]:
    """Where images may live: the configured roots, or the catalog file's folder."""
    roots = [ctx.config.resolve(r) for r in ctx.config.catalog.image_roots]
    return roots or [catalog.catalog_base_dir(catalog_path)]


def run_ingest(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    """Validate the catalog snapshot into the run's ``catalog`` and ``rejects/ingest``.

    A snapshot with no rows, or none valid, raises ``CatalogError`` (exit code 1) after the
    rejects are written, so they can be read; the run's ``catalog`` is removed, so no later
    stage works from an earlier try's, and nothing is published.
    """
    path = ctx.catalog_path()
    settings = ctx.config.catalog
    raw_df = catalog.read_catalog(spark, path, settings.format)
    base_dir = catalog.catalog_base_dir(path)
    # Not persisted: recomputing the checks for the second output measured 3x faster than
    # caching them (ingest 10 s vs 30 s on the demo catalog).
    catalog_df, rejects_df = catalog.validate_catalog(
        raw_df,
        run_id=ctx.run_id,
        base_dir=base_dir,
        image_roots=_image_roots(ctx, path),
        max_sku_id_length=settings.max_sku_id_length,
    )
    n_valid = _write(catalog_df, ctx.layout.catalog)
    n_rejected = _write(rejects_df, ctx.layout.rejects("ingest"))
    if n_valid == 0:
        ctx.layout.catalog.rmtree()
        if n_rejected == 0:
            raise catalog.CatalogError(
                f"catalog {path} has no rows: a header only, or an empty file; "
                "nothing was published, the tables keep the last published run"
            )
        # One row per reason reaches the driver, not the rejects.
        by_reason = (
            _read(spark, ctx.layout.rejects("ingest"), "ingest")
            .groupBy("reason")
            .count()
            .orderBy(F.col("count").desc(), "reason")
            .collect()
        )
        reasons = ", ".join(f"{row['count']} {row['reason']}" for row in by_reason)
        raise catalog.CatalogError(
            f"all {n_rejected} rows of catalog {path} were rejected: {reasons} "
            f"(see {ctx.layout.rejects('ingest')}); nothing was published, the tables keep "
            "the last published run"
        )
    return {"rows_read": n_valid + n_rejected, "valid": n_valid, "rejected": n_rejected}


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
    missing = set(embed.EMBEDDINGS_COLUMNS) - set(stored_df.columns)
    if missing:
        log.info("embed: run %s lacks %s; embedding everything", earlier[-1], sorted(missing))
        return None
    log.info("embed: reusing unchanged vectors of run %s", earlier[-1])
    return stored_df


def run_embed(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    model, settings = ctx.config.model, ctx.config.embed
    try:
        spec = backbones.resolve_model(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    catalog_df = _read(spark, ctx.layout.catalog, "embed")
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        roots=tuple(_image_roots(ctx, ctx.catalog_path())),
    )
    peak_rss = spark.sparkContext.accumulator(0, embed.MaxParam())
    stored_df = _stored_vectors(spark, ctx) if settings.incremental else None
    vectors: list[DataFrame] = []
    rejects: list[DataFrame] = []
    persisted: list[DataFrame] = []
    try:
        if stored_df is None:
            todo_df = catalog_df
        else:
            # A cheap pass first: hash every image's bytes; only new hashes reach the network.
            hashed_df = embed.with_content_hashes(catalog_df, limits).persist()
            persisted.append(hashed_df)
            reused_df, todo_df = embed.reuse_stored_vectors(hashed_df, stored_df, spec.model_id)
            vectors.append(reused_df)
            rejects.append(embed.image_rejects(hashed_df, "hashed", ctx.run_id))
        n_todo = todo_df.count()
        embedded = None
        if n_todo:
            cores = spark.sparkContext.defaultParallelism
            # Enough partitions to keep every core busy, few enough that each holds several
            # batches.
            n_partitions = max(1, min(cores * 4, math.ceil(n_todo / model.batch_size)))
            # Persisted so that each image is read and embedded once for both outputs.
            results_df = embed.with_embedding_results(
                todo_df, model, settings, n_partitions, limits, peak_rss
            ).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(results_df)
            new_df, new_rejects_df = embed.split_embedding_results(results_df, ctx.run_id)
            new_df, embedded = _counted(new_df, "embedded")
            vectors.append(new_df)
            rejects.append(new_rejects_df)
        # An empty catalog (ingest refuses one; a hand-made run folder may hold one) gives
        # empty outputs with the columns of real ones.
        no_vectors_df, no_rejects_df = embed.split_embedding_results(
            catalog_df.filter(F.lit(False)).withColumn(
                "embedded", F.lit(None).cast(embed.EMBED_RESULT)
            ),
            ctx.run_id,
        )
        n_vectors = _write(_union(vectors, no_vectors_df), ctx.layout.embeddings)
        n_rejected = _write(_union(rejects, no_rejects_df), ctx.layout.rejects("embed"))
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
        "rejected": n_rejected,
        "worker_peak_rss_mb": round(peak_rss.value / 2**20),
    }


def _union(dfs: list[DataFrame], empty_df: DataFrame) -> DataFrame:
    """The rows of every frame in ``dfs``; ``empty_df`` (their columns, no rows) when there are
    none (reduce has nothing to start from otherwise)."""
    if not dfs:
        return empty_df
    return reduce(DataFrame.unionByName, dfs)


def run_index(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    embeddings_df = _read(spark, ctx.layout.embeddings, "index")
    settings = ctx.config.index
    # Shards of an earlier try of this date (a category since gone) must not linger.
    ctx.layout.index_dir.rmtree()
    projection = None
    if settings.pca_dim:
        projection = index.fit_projection(
            embeddings_df,
            dim=settings.pca_dim,
            whiten=settings.pca_whiten,
            sample=settings.pca_sample,
            seed=settings.seed,
        )
        log.info(
            "index: PCA to %d axes, %s", settings.pca_dim, projection.save(ctx.layout.index_dir)
        )
    manifest_df = index.build_category_indexes(
        embeddings_df,
        index_dir=ctx.layout.index_dir,
        settings=settings,
        run_id=ctx.run_id,
        projection=projection,
    )
    n_shards = _write(manifest_df, ctx.layout.index_manifest)
    totals = (
        _read(spark, ctx.layout.index_manifest, "index")
        .agg(
            F.sum("n_items").alias("items"),
            F.count_if(F.col("kind") == index.EXACT).alias("exact_shards"),
            F.count_distinct("category").alias("categories"),
        )
        .first()
    )
    return {
        "shards": n_shards,
        "exact_shards": int(totals["exact_shards"] or 0),
        "categories": int(totals["categories"] or 0),
        "items": int(totals["items"] or 0),
    }


def _shared_photos(spark: SparkSession, ctx: RunContext) -> DataFrame | None:
    """The duplicates stage's listings without a photo of their own; None when the run has
    none (no folder, or a folder without Parquet files: an older run, or a hand-made one)."""
    folder = ctx.layout.shared_photos
    if not folder.exists() or not any(p.name.endswith(".parquet") for p in folder.iterdir()):
        return None
    return spark.read.parquet(str(folder))


def _category_paths(spark: SparkSession, ctx: RunContext) -> DataFrame:
    """(category, category_path) of the run's catalog; empty without the optional column
    (or without a catalog: a run folder made from vectors alone)."""
    if not ctx.layout.catalog.exists():
        return spark.createDataFrame([], "category string, category_path string")
    return neighbors.category_paths(_read(spark, ctx.layout.catalog, "neighbors"))


def run_neighbors(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    manifest_df = _read(spark, ctx.layout.index_manifest, "neighbors")
    clusters_df = _read(spark, ctx.layout.duplicate_clusters, "neighbors")
    embeddings_df = _read(spark, ctx.layout.embeddings, "neighbors")
    shared_df = _shared_photos(spark, ctx)
    settings = ctx.config.neighbors
    k, search_k = settings.k, ctx.config.index.search_k
    # One row per category (and per ancestor path) reaches the driver, like the manifest.
    plans, products_under = neighbors.plan_categories(
        neighbors.eligible_listings(embeddings_df, clusters_df, shared_df),
        _category_paths(spark, ctx),
        k,
    )
    # Clusters take places that are then given to the next products: ask each category's
    # shards for enough more that K distinct products remain.
    extra = {category: plan.extra for category, plan in plans.items()}
    shared_path = None if shared_df is None else str(ctx.layout.shared_photos)
    candidates = [
        neighbors.similar_items(
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
        neighbors.borrowing_targets(plans, products_under, k)
        if settings.borrow_from_ancestors
        else {}
    )
    if borrowing:
        pairs, sources = neighbors.borrowing_pairs(manifest_df, borrowing)
        candidates.append(
            neighbors.similar_items(
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
    # Merges each SKU's candidates (sub-shards, borrowed) by source and score, keeps k.
    similar_df = neighbors.best_k(reduce(DataFrame.unionByName, candidates), clusters_df, k)
    n_rows = _write(similar_df, ctx.layout.similar_items)
    per_sku = (
        _read(spark, ctx.layout.similar_items, "neighbors")
        .groupBy("sku_id")
        .agg(
            F.count(F.lit(1)).alias("count"),
            F.count_if(F.col("source") != neighbors.OWN_CATEGORY).alias("borrowed"),
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
    }
    if settings.recall_queries:
        counts |= _measured_recall(manifest_df, ctx)
    return counts


def _measured_recall(manifest_df: DataFrame, ctx: RunContext) -> dict:
    """recall@k of the Annoy shards on sampled queries: pooled, worst shard, and per shard
    (one row per shard reaches the driver)."""
    k = ctx.config.neighbors.k
    rows = index.measure_recall(
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


def _reviews(spark: SparkSession, ctx: RunContext) -> DataFrame:
    """The merchandisers' ``duplicate_reviews`` table (read only: the job never writes it)."""
    path = ctx.layout.table("duplicate_reviews")
    if not DeltaTable.is_deltatable(str(path)):
        return spark.createDataFrame([], duplicates.REVIEWS_SCHEMA)
    # Through the Delta log, never the folder: it holds superseded files too.
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return spark.createDataFrame([], duplicates.REVIEWS_SCHEMA)
    return spark.read.parquet(*files)


def run_duplicates(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    embeddings_df = _read(spark, ctx.layout.embeddings, "duplicates")
    manifest_df = _read(spark, ctx.layout.index_manifest, "duplicates")
    catalog_df = _read(spark, ctx.layout.catalog, "duplicates")
    settings = ctx.config.duplicates
    decisions_df = duplicates.latest_decisions(_reviews(spark, ctx)).localCheckpoint()
    # Placeholders first: their listings are no evidence of anything, for any kind of pair.
    n_shared = _write(
        duplicates.shared_photos(
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
    shared_df = _read(spark, ctx.layout.shared_photos, "duplicates")
    own_photo_df = duplicates.without_shared_photos(embeddings_df, shared_df)
    evidence_df = duplicates.merge_pairs(
        duplicates.content_hash_pairs(own_photo_df),
        duplicates.phash_pairs(
            own_photo_df,
            max_distance=settings.phash_max_distance,
            max_bucket=settings.phash_max_bucket,
            min_similarity=settings.phash_min_similarity,
        ),
        duplicates.confirmed_by_descriptor(
            # The index holds every listing: its answers lose the placeholders here, before
            # their descriptors are joined.
            duplicates.without_shared_photos(
                duplicates.embedding_pairs(
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
    # A confirmed review still counts: a merchandiser's word beats tonight's evidence.
    pairs_df = duplicates.apply_decisions(evidence_df, decisions_df)
    n_pairs = _write(pairs_df, ctx.layout.duplicate_pairs)
    pairs_df = _read(spark, ctx.layout.duplicate_pairs, "duplicates")
    clusters_df = duplicates.duplicate_clusters(
        pairs_df,
        catalog_df,
        embeddings_df,
        run_id=ctx.run_id,
        chain_min_similarity=settings.chain_min_similarity,
        decisions_df=decisions_df,
    )
    n_members = _write(clusters_df, ctx.layout.duplicate_clusters)
    written_df = _read(spark, ctx.layout.duplicate_clusters, "duplicates")
    by_evidence = {
        f"pairs_{row.evidence.replace(',', '+')}": row["count"]
        for row in _read(spark, ctx.layout.duplicate_pairs, "duplicates")
        .groupBy("evidence")
        .count()
        .collect()
    }
    return {
        "pairs": n_pairs,
        **dict(sorted(by_evidence.items())),
        "reviews_applied": decisions_df.count(),
        "clusters": written_df.select("cluster_id").distinct().count(),
        "listings_in_clusters": n_members,
        "shared_photo_groups": shared_df.select("group_id").distinct().count(),
        "listings_without_own_photo": n_shared,
    }


def run_mismatches(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    settings = ctx.config.mismatches
    embeddings_df = _read(spark, ctx.layout.embeddings, "mismatches")
    if settings.enabled:
        flagged_df = mismatch.category_mismatches(
            embeddings_df, settings=settings, run_id=ctx.run_id
        )
    else:  # an empty table, so the report and the published table still say "none"
        flagged_df = spark.createDataFrame([], mismatch.MISMATCH_SCHEMA)
    n_flagged = _write(flagged_df, ctx.layout.category_mismatches)
    written_df = _read(spark, ctx.layout.category_mismatches, "mismatches")
    return {
        "flagged": n_flagged,
        "categories_with_flags": written_df.select("category").distinct().count(),
    }


REPORT_MAX_CLUSTERS = 500
REPORT_MAX_MISMATCHES = 200
# Shared photos (placeholders): the largest groups on the page, and per group the listings
# (by sku_id) in its CSV; the shared_photos table holds every listing.
REPORT_MAX_SHARED_GROUPS = 100
REPORT_MAX_SHARED_LISTINGS = 2000


def run_report(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    clusters_df = _read(spark, ctx.layout.duplicate_clusters, "report")
    catalog_df = _read(spark, ctx.layout.catalog, "report")
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
        .select(*report.MEMBER_COLUMNS)
        .toPandas()
    )
    # The most confident flags (no neighbour of their own category, most in the suggested one).
    flagged = (
        _read(spark, ctx.layout.category_mismatches, "report")
        .orderBy(
            "own_share",
            F.col("suggested_share").desc(),
            F.col("suggested_score").desc(),
            "sku_id",
        )
        .limit(REPORT_MAX_MISMATCHES)
        .join(catalog_df.select("sku_id", "title", "image_uri"), "sku_id")
        .select(*report.MISMATCH_COLUMNS)
        .toPandas()
    )
    shared_df = _read(spark, ctx.layout.shared_photos, "report")
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
        .select(*report.SHARED_PHOTO_COLUMNS)
        .toPandas()
    )
    totals = {"SKUs in catalog": catalog_df.count()}
    paths = report.write_duplicate_report(
        members,
        ctx.layout.report_dir,
        run_id=ctx.run_id,
        max_clusters=REPORT_MAX_CLUSTERS,
        totals=totals,
        mismatches=flagged,
        shared_photos=shared,
    )
    log.info("merchandiser report: %s", paths.html)
    return {
        "clusters_shown": int(members["cluster_id"].nunique()),
        "listings_shown": len(members),
        "mismatches_shown": len(flagged),
        "shared_photo_groups_shown": int(shared["group_id"].nunique()),
    }


def run_publish(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
    """Write every table with the configured writer (delta-rs, or delta-spark where the Delta
    JARs are), one commit each, then the run's ``runs`` record (delta-rs: one small row)."""
    layout = ctx.layout
    # Tables that keep every run's rows replace only this run's; the others are the
    # current state and are replaced whole.
    sources: dict[str, tuple[list[Location], bool]] = {
        "catalog": ([layout.catalog], False),
        "rejects": ([layout.rejects("ingest"), layout.rejects("embed")], True),
        "embeddings": ([layout.embeddings], False),
        "index_manifest": ([layout.index_manifest], True),
        "similar_items": ([layout.similar_items], False),
        "duplicate_clusters": ([layout.duplicate_clusters], False),
        "category_mismatches": ([layout.category_mismatches], False),
        "shared_photos": ([layout.shared_photos], False),
    }
    for folders, _ in sources.values():
        for folder in folders:
            if not folder.exists():
                raise FileNotFoundError(f"{folder} does not exist: run its stage before publish")
    writer = tables.table_writer(ctx.config.publish.writer, spark)
    log.info("publish: tables written with %s", writer.name)
    gate_results = _check_gates(spark, ctx)
    counts: dict[str, int] = {}
    versions: dict[str, int] = {}
    for name, (folders, per_run) in sources.items():
        if per_run:
            # Tables keeping every run's rows: this run's rows replaced in one commit.
            versions[name] = writer.replace_run(layout.table(name), folders, ctx.run_id)
        else:
            # The whole table replaced by the run's files in one atomic commit.
            versions[name] = writer.replace(layout.table(name), folders)
        counts[name] = tables.count_rows(layout.table(name), ctx.run_id if per_run else None)
        log.info("published %s: version %d, %d rows", name, versions[name], counts[name])
        faults.point(f"publish.after.{name}")
    _write_runs_record(ctx, counts, status="published", gates=gate_results, versions=versions)
    return counts


def _check_gates(spark: SparkSession, ctx: RunContext) -> list[quality.GateResult]:
    """Measure every gate; on a failure record the run as gate_failed and raise GateFailed."""
    settings = ctx.config.gates
    if not settings.enabled:
        return []
    stats = read_stats(ctx.layout)
    counts = {stage: result["counts"] for stage, result in stats.items()}
    results = quality.evaluate_gates(
        settings,
        k=ctx.config.neighbors.k,
        similar_df=_read(spark, ctx.layout.similar_items, "publish"),
        embeddings_df=_read(spark, ctx.layout.embeddings, "publish"),
        previous_df=quality.published_similar_items(spark, ctx.layout.table("similar_items")),
        rows_read=counts.get("ingest", {}).get("rows_read", 0),
        rows_rejected=counts.get("ingest", {}).get("rejected", 0)
        + counts.get("embed", {}).get("rejected", 0),
        recall=counts.get("neighbors", {}).get("recall_at_k"),
        # What each listing can get: its category's products (clusters count once), its
        # relatives' where it borrows, nothing for listings without a photo of their own.
        clusters_df=_read(spark, ctx.layout.duplicate_clusters, "publish"),
        shared_photos_df=_shared_photos(spark, ctx),
        paths_df=_category_paths(spark, ctx)
        if ctx.config.neighbors.borrow_from_ancestors
        else None,
    )
    for result in results:
        log.info(
            "gate %s: %.4g (%s) %s",
            result.gate,
            result.value,
            result.limit_text,
            "passed" if result.passed else "FAILED",
        )
    if not all(r.passed for r in results):
        _write_runs_record(ctx, {}, status="gate_failed", gates=results, versions={})
        raise quality.GateFailed(results)
    return results


def _write_runs_record(
    ctx: RunContext,
    published: dict[str, int],
    *,
    status: str,
    gates: list[quality.GateResult],
    versions: dict[str, int],
) -> None:
    stats = read_stats(ctx.layout)
    # One row per shard: the model ids without reading every vector back to the driver.
    model_ids = (
        tables.parquet_reader(ctx.layout.index_manifest).read_all().column("model_id").unique()
    )
    record = {
        "run_id": ctx.run_id,
        "run_date": ctx.run_date,
        "model_id": ",".join(sorted(model_ids.to_pylist())),
        "status": status,
        "finished_at": datetime.now(UTC),
        "counts": json.dumps(
            {stage: result["counts"] for stage, result in stats.items()} | {"published": published},
            sort_keys=True,
        ),
        "stage_seconds": json.dumps(
            {stage: round(result["seconds"], 3) for stage, result in stats.items()},
            sort_keys=True,
        ),
        "gate_results": quality.results_json(gates),
        # The version each table was published at: what `lookalike rollback --to-run` restores.
        "table_versions": json.dumps(versions, sort_keys=True),
    }
    schema = pa.schema(
        [
            ("run_id", pa.string()),
            ("run_date", pa.date32()),
            ("model_id", pa.string()),
            ("status", pa.string()),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("counts", pa.string()),
            ("stage_seconds", pa.string()),
            ("gate_results", pa.string()),
            ("table_versions", pa.string()),
        ]
    )
    runs = pa.Table.from_pylist([record], schema=schema)
    tables.write_table(ctx.layout.table("runs"), runs, replace_where=f"run_id = '{ctx.run_id}'")


STAGE_FUNCTIONS: dict[str, Callable[[SparkSession, RunContext], dict[str, int]]] = {
    "ingest": run_ingest,
    "embed": run_embed,
    "index": run_index,
    "duplicates": run_duplicates,
    "neighbors": run_neighbors,
    "mismatches": run_mismatches,
    "report": run_report,
    "publish": run_publish,
}
assert tuple(STAGE_FUNCTIONS) == STAGES


def run_stage(stage: str, spark: SparkSession, ctx: RunContext) -> StageResult:
    """Run one stage and record its counts and time for the runs record."""
    log.info("stage %s: started (run %s)", stage, ctx.run_id)
    started = time.perf_counter()
    counts = STAGE_FUNCTIONS[stage](spark, ctx)
    result = StageResult(stage, counts, time.perf_counter() - started)
    ctx.layout.stats(stage).write_text(
        json.dumps({"counts": counts, "seconds": result.seconds}, sort_keys=True)
    )
    log.info("stage %s: done in %.1f s %s", stage, result.seconds, counts)
    return result


def read_stats(layout: RunLayout) -> dict[str, dict]:
    stats = {}
    for stage in STAGES:
        path = layout.stats(stage)
        if path.exists():
            stats[stage] = json.loads(path.read_text())
    return stats


def run_nightly(spark: SparkSession, ctx: RunContext) -> list[StageResult]:
    # A writer that cannot run here fails now, not after a night of embedding.
    tables.table_writer(ctx.config.publish.writer, spark)
    # Stale stats of an earlier try of this date must not leak into this run's record.
    for stage in STAGES:
        ctx.layout.stats(stage).unlink(missing_ok=True)
    return [run_stage(stage, spark, ctx) for stage in STAGES]
