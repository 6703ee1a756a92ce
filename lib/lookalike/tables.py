"""Delta tables, written with delta-rs (no JVM, no Delta JARs needed), one commit per write.

A stage's Parquet output is streamed batch by batch into the table's commit, so the driver
holds one record batch at a time, not the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake


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
