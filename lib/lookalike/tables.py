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
import time
import uuid
from collections.abc import Sequence
from os import PathLike

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.transaction import AddAction
from pyarrow import fs as pafs

from lookalike import faults
from lookalike.core.storage import Location

log = logging.getLogger(__name__)

STAGING = "_staging"

# The tables written from the driver, declared once (the Spark stages' tables take their
# schema from the stage that writes them).
RUNS_SCHEMA = pa.schema(
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
# Merchandisers' decisions on pairs: written by `lookalike review` and the review app, read by
# the duplicates stage. A `canonical` decision names one listing twice (sku_id_a == sku_id_b).
REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("sku_id_a", pa.string(), nullable=False),
        pa.field("sku_id_b", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reviewer", pa.string()),
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# Merchandisers' decisions on category mismatches (the review app), read by the mismatches
# stage: the category the listing had when it was decided, and what was suggested then.
MISMATCH_REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("sku_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("suggested_category", pa.string()),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reviewer", pa.string()),
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# A table or a folder: a local path, a URI (s3a://bucket/tables/x) or a Location.
Where = str | PathLike[str] | Location


def _dataset(folder: Location, schema: pa.Schema | None = None) -> ds.Dataset:
    filesystem, path = folder.arrow()
    return ds.dataset(path, filesystem=filesystem, format="parquet", schema=schema)


def parquet_reader(folders: Where | Sequence[Where]) -> pa.RecordBatchReader:
    """Stream folders of Parquet files written by Spark (its _SUCCESS markers are skipped).

    Columns are read as nullable: Spark marks some columns required in one stage's files and
    optional in another's, and a Delta table needs one schema.
    """
    listed = [folders] if isinstance(folders, (str, PathLike, Location)) else list(folders)
    locations = [Location.of(folder) for folder in listed]
    first = _dataset(locations[0])
    schema = pa.schema([field.with_nullable(True) for field in first.schema])
    parts = [_dataset(folder, schema) for folder in locations]
    return ds.dataset(parts).scanner().to_reader()


def write_table(
    path: Where, data: pa.RecordBatchReader | pa.Table, *, replace_where: str | None = None
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


def is_table(path: Where) -> bool:
    return DeltaTable.is_deltatable(str(path))


def version(path: Where) -> int:
    """The table's current version."""
    return DeltaTable(str(path)).version()


def current_files(path: Where) -> list[str]:
    """The Parquet files of the table's current version (none when there is no table): what a
    reader such as Spark reads, never the folder, which holds superseded files too."""
    return DeltaTable(str(path)).file_uris() if is_table(path) else []


def read_with_spark(spark, path: Where):
    """The table's current version as a Spark DataFrame; None without a table or rows."""
    files = current_files(path)
    return spark.read.parquet(*files) if files else None


# Concurrent appends (two reviewers deciding at once) do not conflict in Delta: delta-rs
# retries a commit whose version was taken by another append, up to this many times.
APPEND_COMMIT_RETRIES = 50


def append(path: Where, data: pa.Table) -> int:
    """Add rows in one commit; returns the table's version after it (others may follow).

    Appends from several threads or processes at the same moment all land (tested with the
    review app's writers); on object storage that needs a store with atomic put-if-absent
    (S3 since 2024, or delta-rs's locking options), as any Delta writer does.
    """
    write_deltalake(
        str(path),
        data,
        mode="append",
        commit_properties=CommitProperties(max_commit_retries=APPEND_COMMIT_RETRIES),
    )
    return version(path)


def restore(path: Where, to_version: int) -> int:
    """Make ``to_version`` the table's contents again in a new commit; returns that version."""
    DeltaTable(str(path)).restore(to_version)
    return version(path)


def delta_dataset(path: Where, version: int | None = None) -> ds.Dataset:
    """A version of a Delta table (the current one by default) as a pyarrow dataset.

    The files are read through pyarrow's own filesystem, local folders too: delta-rs's
    default (a Python wrapper of its Rust store) can abort the process at exit when a pyarrow
    thread releases it after the interpreter shut down (seen 1 exit in 6-12 with deltalake
    1.6.6 on S3, and once after the nightly summary on a local folder).
    """
    table = DeltaTable(str(path), version=version)
    filesystem, root = Location.of(path).arrow()
    return table.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(root, filesystem))


def read_table(
    path: Where, version: int | None = None, columns: list[str] | None = None
) -> pa.Table:
    return delta_dataset(path, version).to_table(columns=columns)


def count_rows(path: Where, run_id: str | None = None) -> int:
    """Rows of the table's current version (of one run only, when run_id is given)."""
    dataset = delta_dataset(path)
    if run_id is None:
        return dataset.count_rows()
    return dataset.count_rows(filter=ds.field("run_id") == run_id)


def _parquet_files(folders: Sequence[Location]) -> list[Location]:
    return sorted(
        f
        for folder in folders
        for f in folder.iterdir()
        if f.name.endswith(".parquet") and f.size()
    )


def publish_files(table: Where, folders: Sequence[Where]) -> int:
    """Replace the table's contents with the Parquet files of ``folders``, in one commit.

    Returns the new version. The files are staged under ``<table>/_staging/<token>/`` (hard
    links on a local disk, server-side copies on object storage) and added by a single Delta
    transaction: readers see the previous version until the commit, then the new one, never a
    mix.
    """
    table, folders = Location.of(table), [Location.of(folder) for folder in folders]
    if not DeltaTable.is_deltatable(str(table)):
        return write_table(table, parquet_reader(folders))
    clean_stale_staging(table)
    files = _parquet_files(folders)
    schema = parquet_reader(folders).schema
    token = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = table / STAGING / token
    staging.mkdir()
    actions = []
    for i, source in enumerate(files):
        target = staging / f"part-{i:05d}.parquet"
        source.copy_to(target)
        with target.open_input_file() as handle:
            n_rows = pq.read_metadata(handle).num_rows
        actions.append(
            AddAction(
                path=f"{STAGING}/{token}/{target.name}",
                size=target.size(),
                partition_values={},
                modification_time=target.mtime_ms(),
                data_change=True,
                stats=json.dumps({"numRecords": n_rows}),
            )
        )
    faults.point("publish.staged")
    DeltaTable(str(table)).create_write_transaction(actions, mode="overwrite", schema=schema)
    return DeltaTable(str(table)).version()


def clean_stale_staging(table: Where) -> list[str]:
    """Delete staging folders no commit refers to (left by a process killed mid-publish)."""
    table = Location.of(table)
    folders = list((table / STAGING).iterdir())
    if not folders:
        return []
    log_text = "".join(
        entry.read_bytes().decode("utf-8", errors="replace")
        for entry in (table / "_delta_log").iterdir()
        if entry.name.endswith(".json")
    )
    removed = []
    for folder in folders:
        if f"{STAGING}/{folder.name}/" not in log_text and folder.is_dir():
            folder.rmtree()
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
    from lookalike.session import jvm_has_class

    return jvm_has_class(spark, DELTA_SPARK_CLASS)


class DeltaRsWriter:
    """delta-rs on the driver: the run's Parquet files staged and committed at once."""

    name = "delta-rs"

    def replace(self, table: Where, folders: Sequence[Where]) -> int:
        return publish_files(table, folders)

    def replace_run(self, table: Where, data: Sequence[Where] | pa.Table, run_id: str) -> int:
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

    def _version(self, table: Where) -> int:
        from delta.tables import DeltaTable as SparkDeltaTable

        history = SparkDeltaTable.forPath(self.spark, str(table)).history(1)
        return int(history.first()["version"])

    def replace(self, table: Where, folders: Sequence[Where]) -> int:
        df = self.spark.read.parquet(*[str(f) for f in folders])
        df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
            str(table)
        )
        return self._version(table)

    def replace_run(self, table: Where, data: Sequence[Where] | pa.Table, run_id: str) -> int:
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
