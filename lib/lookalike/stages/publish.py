"""Publish: the gates measured, then every table replaced in one Delta commit each, then the
run's record in ``runs``; a failed gate publishes nothing (``GateFailed``, exit code 3)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
from pyspark.sql import SparkSession

from lookalike import faults, tables
from lookalike.core.storage import Location
from lookalike.stages import gates
from lookalike.stages.common import read, read_shared_photos, read_stats
from lookalike.stages.neighbor_plans import read_category_paths, read_item_groups

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext

log = logging.getLogger("lookalike")


def run(spark: SparkSession, ctx: RunContext) -> dict[str, int]:
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
        "style_groups": ([layout.style_groups], False),
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
    gate_results = check_gates(spark, ctx)
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
    write_runs_record(ctx, counts, status="published", gate_results=gate_results, versions=versions)
    return counts


def check_gates(spark: SparkSession, ctx: RunContext) -> list[gates.GateResult]:
    """Measure every gate; on a failure record the run as gate_failed and raise GateFailed."""
    settings = ctx.config.gates
    if not settings.enabled:
        return []
    stats = read_stats(ctx.layout)
    counts = {stage: result["counts"] for stage, result in stats.items()}
    results = gates.evaluate_gates(
        settings,
        k=ctx.config.neighbors.k,
        similar_df=read(spark, ctx.layout.similar_items, "publish"),
        embeddings_df=read(spark, ctx.layout.embeddings, "publish"),
        previous_df=gates.published_similar_items(spark, ctx.layout.table("similar_items")),
        rows_read=counts.get("ingest", {}).get("rows_read", 0),
        rows_rejected=counts.get("ingest", {}).get("rejected", 0)
        + counts.get("embed", {}).get("rejected", 0),
        recall=counts.get("neighbors", {}).get("recall_at_k"),
        # What each listing can get: its category's products (clusters count once), its
        # relatives' where it borrows, nothing for listings without a photo of their own.
        clusters_df=read(spark, ctx.layout.duplicate_clusters, "publish"),
        shared_photos_df=read_shared_photos(spark, ctx),
        paths_df=read_category_paths(spark, ctx)
        if ctx.config.neighbors.borrow_from_ancestors
        else None,
        groups_df=read_item_groups(spark, ctx),
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
        write_runs_record(ctx, {}, status="gate_failed", gate_results=results, versions={})
        raise gates.GateFailed(results)
    return results


def write_runs_record(
    ctx: RunContext,
    published: dict[str, int],
    *,
    status: str,
    gate_results: list[gates.GateResult],
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
        "gate_results": gates.results_json(gate_results),
        # The version each table was published at: what `lookalike rollback --to-run` restores.
        "table_versions": json.dumps(versions, sort_keys=True),
    }
    runs = pa.Table.from_pylist([record], schema=tables.RUNS_SCHEMA)
    tables.write_table(ctx.layout.table("runs"), runs, replace_where=f"run_id = '{ctx.run_id}'")
