"""What every stage's ``run`` shares: reading the run's inputs, writing and counting its outputs.

Stages hand each other Parquet folders under ``runs/<run_id>/`` (``ctx.layout``); a stage's
``run(spark, ctx)`` reads what earlier stages wrote, writes its own and returns its counts.
"""

from __future__ import annotations

import json
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from lookalike.core.storage import Location
from lookalike.layout import STAGES, RunLayout

if TYPE_CHECKING:
    from lookalike.pipeline import RunContext


def counted(df: DataFrame, name: str) -> tuple[DataFrame, Observation]:
    """``df`` counting its rows as they pass: the count is read after the next action."""
    observation = Observation(name)
    return df.observe(observation, F.count(F.lit(1)).alias("rows")), observation


def write(df: DataFrame, path: Location) -> int:
    """Write ``df`` as the Parquet folder ``path``; its row count, taken while writing."""
    df, written = counted(df, path.name)
    df.write.mode("overwrite").parquet(str(path))
    return written.get["rows"]


def read(spark: SparkSession, path: Location, stage: str) -> DataFrame:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run the stage that writes it before '{stage}'"
        )
    return spark.read.parquet(str(path))


def union(dfs: list[DataFrame], empty_df: DataFrame) -> DataFrame:
    """The rows of every frame in ``dfs``; ``empty_df`` (their columns, no rows) when there are
    none (reduce has nothing to start from otherwise)."""
    if not dfs:
        return empty_df
    return reduce(DataFrame.unionByName, dfs)


def read_shared_photos(spark: SparkSession, ctx: RunContext) -> DataFrame | None:
    """The duplicates stage's listings without a photo of their own; None when the run has
    none (no folder, or a folder without Parquet files: an older run, or a hand-made one)."""
    folder = ctx.layout.shared_photos
    if not folder.exists() or not any(p.name.endswith(".parquet") for p in folder.iterdir()):
        return None
    return spark.read.parquet(str(folder))


def read_stats(layout: RunLayout) -> dict[str, dict]:
    """Each finished stage's counts and seconds (``runs/<run_id>/stats/<stage>.json``)."""
    stats = {}
    for stage in STAGES:
        path = layout.stats(stage)
        if path.exists():
            stats[stage] = json.loads(path.read_text())
    return stats
