"""The nightly run: its context, and the stages run one after another.

Each stage is a module of ``lookalike.stages`` with one ``run(spark, ctx)``: it reads the
earlier stages' Parquet output under the run's folder and writes its own, so a stage can run
alone (``spark-submit jobs/<stage>.py``) or all of them in one session (``lookalike
nightly``). A stage returns its counts; ``run_stage`` records them with the stage's time in
``runs/<run_id>/stats/<stage>.json``, which the publish stage turns into the ``runs`` record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from pyspark.sql import SparkSession

from lookalike import tables
from lookalike.config import Config, ConfigError
from lookalike.layout import STAGES, RunLayout
from lookalike.stages import (
    duplicates,
    embed,
    index,
    ingest,
    mismatches,
    neighbors,
    publish,
    report,
    styles,
)

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


STAGE_FUNCTIONS: dict[str, Callable[[SparkSession, RunContext], dict[str, int]]] = {
    "ingest": ingest.run,
    "embed": embed.run,
    "index": index.run,
    "duplicates": duplicates.run,
    "neighbors": neighbors.run,
    "styles": styles.run,
    "mismatches": mismatches.run,
    "report": report.run,
    "publish": publish.run,
}
assert tuple(STAGE_FUNCTIONS) == STAGES


def run_stage(stage: str, spark: SparkSession, ctx: RunContext) -> StageResult:
    """Run one stage and record its counts and time for the runs record."""
    log.info("stage %s: started (run %s)", stage, ctx.run_id)
    started = time.perf_counter()
    # Every Spark job of the stage carries its name in the Spark UI and its REST API.
    spark.sparkContext.setJobDescription(f"lookalike {stage} (run {ctx.run_id})")
    try:
        counts = STAGE_FUNCTIONS[stage](spark, ctx)
    finally:
        spark.sparkContext.setJobDescription(None)
    result = StageResult(stage, counts, time.perf_counter() - started)
    ctx.layout.stats(stage).write_text(
        json.dumps({"counts": counts, "seconds": result.seconds}, sort_keys=True)
    )
    log.info("stage %s: done in %.1f s %s", stage, result.seconds, counts)
    return result


def run_nightly(spark: SparkSession, ctx: RunContext) -> list[StageResult]:
    # A writer that cannot run here fails now, not after a night of embedding.
    tables.table_writer(ctx.config.publish.writer, spark)
    # Stale stats of an earlier try of this date must not leak into this run's record.
    for stage in STAGES:
        ctx.layout.stats(stage).unlink(missing_ok=True)
    return [run_stage(stage, spark, ctx) for stage in STAGES]
