"""Delta tables, written with delta-rs (no JVM, no Delta JARs needed) or, on clusters with the
Delta JARs, delta-spark; one commit per write.

With delta-rs (``DeltaRsWriter``, the default) there are two ways in:
- ``publish_files``: a stage's Parquet files are linked (or copied) into a staging folder
  inside the table, then one atomic commit replaces the table's contents with them. No row
  passes through the driver, whatever the table's size; a process killed before the commit
  leaves the table at its previous version and a staging folder that the next publish
  deletes (``clean_stale_staging``).
- ``write_table``: data streamed batch by batch into a commit (the driver holds one record
  batch at a time), for the small per-run tables and a table's first version.

``DeltaSparkWriter`` writes the same tables through Spark's ``format("delta")`` (each write one
Delta commit made by the executors), chosen by ``publish.writer`` or automatically where the
session has the JARs. Readers see the same tables either way; delta-rs reads them back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction

from lookalike import faults

log = logging.getLogger(__name__)

STAGING = "_staging"


def parquet_reader(folders: str | Path | Sequence[str | Path]) -> pa.RecordBatchReader:
    """Stream folders of Parquet files written by Spark (its _SUCCESS markers are skipped).

    Columns are read as nullable: Spark marks some columns required in one stage's files and
    optional in another's, and a Delta table needs one schema.
    """
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    first = ds.dataset(str(folders[0]), format="parquet")
    schema = pa.schema([field.with_nullable(True) for field in first.schema])
    parts = [ds.dataset(str(folder), format="parquet", schema=schema) for folder in folders]
    return ds.dataset(parts).scanner().to_reader()


def write_table(
    path: Path, data: pa.RecordBatchReader | pa.Table, *, replace_where: str | None = None
) -> int:
    """Replace the table's contents (or only the rows matching ``replace_where``) in one commit.

    Returns the new table version. ``replace_where`` makes a rerun of the same run replace
    that run's rows instead of appending them a second time.
    """
    if replace_where is not None and DeltaTable.is_deltatable(str(path)):
        # merge: a column added by a newer version of the job joins the table's schema.
        write_deltalake(
            str(path), data, mode="overwrite", predicate=replace_where, schema_mode="merge"
        )
    elif replace_where is not None:
        write_deltalake(str(path), data, mode="append")
    else:
        write_deltalake(str(path), data, mode="overwrite", schema_mode="overwrite")
    return DeltaTable(str(path)).version()


def read_table(path: Path, version: int | None = None) -> pa.Table:
    return DeltaTable(str(path), version=version).to_pyarrow_table()


def count_rows(path: Path, run_id: str | None = None) -> int:
    """Rows of the table's current version (of one run only, when run_id is given)."""
    dataset = DeltaTable(str(path)).to_pyarrow_dataset()
    if run_id is None:
        return dataset.count_rows()
    return dataset.count_rows(filter=ds.field("run_id") == run_id)


def _parquet_files(folders: Sequence[Path]) -> list[Path]:
    return sorted(
        f for folder in folders for f in Path(folder).glob("*.parquet") if f.stat().st_size
    )


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs nothing when the run folder and the table share a filesystem.
    try:
        os.link(source, target)
    except OSError:
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)


def publish_files(table: Path, folders: Sequence[Path]) -> int:
    """Replace the table's contents with the Parquet files of ``folders``, in one commit.

    Returns the new version. The files are staged under ``<table>/_staging/<token>/`` and
    added by a single Delta transaction: readers see the previous version until the commit,
    then the new one, never a mix.
    """
    if not DeltaTable.is_deltatable(str(table)):
        return write_table(table, parquet_reader(folders))
    clean_stale_staging(table)
    files = _parquet_files(folders)
    schema = parquet_reader(folders).schema
    token = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = table / STAGING / token
    staging.mkdir(parents=True)
    actions = []
    for i, source in enumerate(files):
        target = staging / f"part-{i:05d}.parquet"
        _link_or_copy(source, target)
        actions.append(
            AddAction(
                path=f"{STAGING}/{token}/{target.name}",
                size=target.stat().st_size,
                partition_values={},
                modification_time=int(target.stat().st_mtime * 1000),
                data_change=True,
                stats=json.dumps({"numRecords": pq.read_metadata(target).num_rows}),
            )
        )
    faults.point("publish.staged")
    DeltaTable(str(table)).create_write_transaction(actions, mode="overwrite", schema=schema)
    return DeltaTable(str(table)).version()


def clean_stale_staging(table: Path) -> list[str]:
    """Delete staging folders no commit refers to (left by a process killed mid-publish)."""
    staging = table / STAGING
    if not staging.is_dir():
        return []
    log_text = "".join(
        p.read_text(errors="replace") for p in sorted((table / "_delta_log").glob("*.json"))
    )
    removed = []
    for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
        if f"{STAGING}/{folder.name}/" not in log_text:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.info("%s: removed stale staging folders %s", table.name, removed)
    return removed


# --- writers: delta-rs everywhere, delta-spark where the cluster has the Delta JARs ------------

DELTA_SPARK_CLASS = "io.delta.tables.DeltaTable"


class WriterUnavailable(RuntimeError):
    """The configured table writer cannot run in this Spark session."""


def delta_spark_available(spark) -> bool:
    """Whether this Spark session has the Delta Lake JARs (delta-spark's JVM classes).

    The ``delta-spark`` wheel holds no JARs: a cluster adds them with ``--packages`` or in
    its image. Without them a ``format("delta")`` write fails, so the writer is chosen first.
    """
    try:
        loader = spark.sparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass(DELTA_SPARK_CLASS)
    except Exception:  # noqa: BLE001 - py4j raises Py4JJavaError; no JVM view raises others
        return False
    return True


class DeltaRsWriter:
    """delta-rs on the driver: the run's Parquet files staged and committed at once."""

    name = "delta-rs"

    def replace(self, table: Path, folders: Sequence[Path]) -> int:
        return publish_files(table, folders)

    def replace_run(self, table: Path, data: Sequence[Path] | pa.Table, run_id: str) -> int:
        reader = data if isinstance(data, pa.Table) else parquet_reader(data)
        return write_table(table, reader, replace_where=f"run_id = '{run_id}'")


class DeltaSparkWriter:
    """delta-spark on the executors: each write is one Delta commit made by Spark."""

    name = "delta-spark"

    def __init__(self, spark) -> None:
        if not delta_spark_available(spark):
            raise WriterUnavailable(
                "publish.writer delta-spark: the Delta Lake JARs are not on this Spark "
                f"session's classpath ({DELTA_SPARK_CLASS} not found); add them, e.g. "
                "--packages io.delta:delta-spark_2.13:4.4.1, or use publish.writer: delta-rs"
            )
        self.spark = spark

    def _version(self, table: Path) -> int:
        from delta.tables import DeltaTable as SparkDeltaTable

        history = SparkDeltaTable.forPath(self.spark, str(table)).history(1)
        return int(history.first()["version"])

    def replace(self, table: Path, folders: Sequence[Path]) -> int:
        df = self.spark.read.parquet(*[str(f) for f in folders])
        df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
            str(table)
        )
        return self._version(table)

    def replace_run(self, table: Path, data: Sequence[Path] | pa.Table, run_id: str) -> int:
        if isinstance(data, pa.Table):
            df = self.spark.createDataFrame(data.to_pandas())
        else:
            df = self.spark.read.parquet(*[str(f) for f in data])
        (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", f"run_id = '{run_id}'")
            .option("mergeSchema", "true")
            .save(str(table))
        )
        return self._version(table)


def table_writer(setting: str, spark) -> DeltaRsWriter | DeltaSparkWriter:
    """The writer ``publish.writer`` names; ``auto``: delta-spark where the JARs are, else
    delta-rs (the tables are the same Delta tables either way)."""
    if setting == "delta-rs" or (setting == "auto" and not delta_spark_available(spark)):
        return DeltaRsWriter()
    return DeltaSparkWriter(spark)
