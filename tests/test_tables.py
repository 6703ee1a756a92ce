"""Delta tables written with delta-rs: whole replacement, per-run replacement, streamed input.

Every table is a real Delta table in tmp_path, read back with ``deltalake.DeltaTable``; the
Parquet inputs are real folders written with pyarrow, laid out as Spark writes them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from lookalike.tables import (
    DeltaRsWriter,
    WriterUnavailable,
    count_rows,
    delta_spark_available,
    parquet_reader,
    read_table,
    table_writer,
    write_table,
)


def rows(run_id: str, sku_ids: list[str], score: float = 0.5) -> pa.Table:
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(sku_ids), pa.string()),
            "sku_id": pa.array(sku_ids, pa.string()),
            "score": pa.array([score] * len(sku_ids), pa.float32()),
        }
    )


def content(path: Path, version: int | None = None) -> list[tuple]:
    """The table's rows as sorted (run_id, sku_id, score) tuples, read with DeltaTable."""
    table = DeltaTable(str(path), version=version).to_pyarrow_table()
    return sorted(zip(*(table[c].to_pylist() for c in ("run_id", "sku_id", "score")), strict=True))


# --- write_table -------------------------------------------------------------------------


def test_write_creates_a_table_readable_with_deltalake(tmp_path):
    path = tmp_path / "similar_items"
    version = write_table(path, rows("r1", ["a", "b", "c"]))
    assert version == 0
    assert DeltaTable.is_deltatable(str(path))
    assert content(path) == [("r1", "a", 0.5), ("r1", "b", 0.5), ("r1", "c", 0.5)]
    assert DeltaTable(str(path)).schema().to_arrow().field("score").type == pa.float32()


def test_write_accepts_a_record_batch_reader(tmp_path):
    path = tmp_path / "t"
    reader = pa.RecordBatchReader.from_batches(
        rows("r1", []).schema, rows("r1", ["a", "b"]).to_batches()
    )
    write_table(path, reader)
    assert content(path) == [("r1", "a", 0.5), ("r1", "b", 0.5)]


def test_whole_replacement_keeps_only_the_new_rows_in_a_new_version(tmp_path):
    path = tmp_path / "t"
    first = write_table(path, rows("r1", ["a", "b", "c"]))
    second = write_table(path, rows("r2", ["x"], score=0.9))
    assert second == first + 1
    assert DeltaTable(str(path)).version() == second
    assert content(path) == [("r2", "x", pytest.approx(0.9))]


def test_whole_replacement_may_change_the_schema(tmp_path):
    path = tmp_path / "t"
    write_table(path, rows("r1", ["a"]))
    write_table(path, pa.table({"run_id": ["r2"], "n": pa.array([3], pa.int64())}))
    table = DeltaTable(str(path)).to_pyarrow_table()
    assert table.column_names == ["run_id", "n"]
    assert table.to_pylist() == [{"run_id": "r2", "n": 3}]


def test_version_0_is_readable_after_an_overwrite(tmp_path):
    path = tmp_path / "t"
    write_table(path, rows("r1", ["a", "b"]))
    write_table(path, rows("r2", ["x"]))
    assert content(path, version=0) == [("r1", "a", 0.5), ("r1", "b", 0.5)]
    assert read_table(path, version=0).num_rows == 2
    assert read_table(path).num_rows == 1


def test_first_write_with_replace_where_creates_the_table(tmp_path):
    path = tmp_path / "t"
    assert not DeltaTable.is_deltatable(str(path))
    version = write_table(path, rows("r1", ["a", "b"]), replace_where="run_id = 'r1'")
    assert version == 0
    assert content(path) == [("r1", "a", 0.5), ("r1", "b", 0.5)]


def test_rerun_with_replace_where_replaces_that_run_and_keeps_the_others(tmp_path):
    path = tmp_path / "t"
    r1 = "run_id = 'r1'"
    write_table(path, rows("r0", ["old"]), replace_where="run_id = 'r0'")
    write_table(path, rows("r1", ["a", "b"]), replace_where=r1)
    # The same run again, with a changed answer: replaced, not appended a second time.
    version = write_table(path, rows("r1", ["a", "c"], score=0.7), replace_where=r1)
    assert version == 2
    assert content(path) == [
        ("r0", "old", 0.5),
        ("r1", "a", pytest.approx(0.7)),
        ("r1", "c", pytest.approx(0.7)),
    ]
    assert count_rows(path, run_id="r1") == 2


def test_same_run_written_twice_is_not_duplicated(tmp_path):
    path = tmp_path / "t"
    r1 = "run_id = 'r1'"
    write_table(path, rows("r2", ["z"]), replace_where="run_id = 'r2'")
    write_table(path, rows("r1", ["a", "b"]), replace_where=r1)
    write_table(path, rows("r1", ["a", "b"]), replace_where=r1)
    assert content(path) == [("r1", "a", 0.5), ("r1", "b", 0.5), ("r2", "z", 0.5)]


def test_replace_where_refuses_rows_outside_its_predicate(tmp_path):
    # A run's rows must all match the predicate; delta-rs refuses the commit otherwise, and
    # the table stays at its previous version.
    path = tmp_path / "t"
    write_table(path, rows("r1", ["a"]), replace_where="run_id = 'r1'")
    with pytest.raises(DeltaError, match="failed validation"):
        write_table(path, rows("r2", ["b"]), replace_where="run_id = 'r1'")
    assert DeltaTable(str(path)).version() == 0
    assert content(path) == [("r1", "a", 0.5)]


# --- count_rows --------------------------------------------------------------------------


def test_count_rows_all_and_per_run(tmp_path):
    path = tmp_path / "t"
    write_table(path, rows("r1", ["a", "b", "c"]), replace_where="run_id = 'r1'")
    write_table(path, rows("r2", ["d"]), replace_where="run_id = 'r2'")
    assert count_rows(path) == 4
    assert count_rows(path, run_id="r1") == 3
    assert count_rows(path, run_id="r2") == 1
    assert count_rows(path, run_id="r3") == 0


def test_count_rows_reads_the_current_version(tmp_path):
    path = tmp_path / "t"
    write_table(path, rows("r1", ["a", "b", "c"]))
    write_table(path, rows("r1", ["a"]))
    assert count_rows(path) == 1
    assert count_rows(path, run_id="r1") == 1


# --- parquet_reader ----------------------------------------------------------------------


def spark_like_folder(folder: Path, parts: list[pa.Table]) -> Path:
    """Parquet part files plus Spark's _SUCCESS marker (empty, not Parquet)."""
    folder.mkdir(parents=True)
    for i, part in enumerate(parts):
        pq.write_table(part, folder / f"part-{i:05d}-abc.snappy.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


def required(table: pa.Table, *names: str) -> pa.Table:
    schema = pa.schema([f.with_nullable(False) if f.name in names else f for f in table.schema])
    return table.cast(schema)


def test_parquet_reader_streams_every_row_of_every_folder(tmp_path):
    first = spark_like_folder(tmp_path / "part_a", [rows("r1", ["a", "b"]), rows("r1", ["c"])])
    # Spark marked sku_id required in this stage's files, optional in the other's.
    second_part = required(rows("r1", ["d", "e"]), "sku_id")
    assert not second_part.schema.field("sku_id").nullable
    second = spark_like_folder(tmp_path / "part_b", [second_part])

    reader = parquet_reader([first, second])
    assert isinstance(reader, pa.RecordBatchReader)
    table = reader.read_all()
    assert sorted(table["sku_id"].to_pylist()) == ["a", "b", "c", "d", "e"]
    assert all(field.nullable for field in table.schema)


def test_parquet_reader_with_the_required_folder_first(tmp_path):
    first = spark_like_folder(tmp_path / "a", [required(rows("r1", ["a"]), "sku_id", "run_id")])
    second = spark_like_folder(tmp_path / "b", [rows("r1", ["b"])])
    table = parquet_reader([first, second]).read_all()
    assert sorted(table["sku_id"].to_pylist()) == ["a", "b"]
    assert all(field.nullable for field in table.schema)


def test_parquet_reader_takes_a_single_folder(tmp_path):
    folder = spark_like_folder(tmp_path / "a", [rows("r1", ["a", "b", "c"])])
    assert parquet_reader(folder).read_all().num_rows == 3


def test_parquet_folders_stream_into_a_table(tmp_path):
    first = spark_like_folder(tmp_path / "a", [rows("r1", ["a", "b"])])
    second = spark_like_folder(tmp_path / "b", [required(rows("r1", ["c"]), "sku_id")])
    path = tmp_path / "t"
    write_table(path, parquet_reader([first, second]), replace_where="run_id = 'r1'")
    write_table(path, parquet_reader([first, second]), replace_where="run_id = 'r1'")
    assert content(path) == [("r1", "a", 0.5), ("r1", "b", 0.5), ("r1", "c", 0.5)]


# --- writers ---------------------------------------------------------------------------------

NO_DELTA_JARS = (
    "the Delta Lake JARs are not on this Spark's classpath: the delta-spark wheel holds none and "
    "Maven is unreachable here (shared notes/environment.md); runs where the cluster has them"
)


def _spark_parquet(spark, folder: Path, table: pa.Table) -> Path:
    spark.createDataFrame(table.to_pandas()).coalesce(1).write.mode("overwrite").parquet(
        str(folder)
    )
    return folder


@pytest.mark.slow
def test_auto_writer_is_delta_rs_without_the_jars_and_delta_spark_is_refused(spark):
    if delta_spark_available(spark):
        pytest.skip("this Spark has the Delta JARs: the delta-spark writer test covers it")
    assert table_writer("auto", spark).name == "delta-rs"
    assert table_writer("delta-rs", spark).name == "delta-rs"
    with pytest.raises(WriterUnavailable, match="Delta Lake JARs are not on this Spark"):
        table_writer("delta-spark", spark)


@pytest.mark.slow
def test_delta_rs_writer_replaces_a_table_and_one_run(spark, tmp_path):
    writer = DeltaRsWriter()
    first = _spark_parquet(spark, tmp_path / "p1", rows("r1", ["a", "b"]))
    second = _spark_parquet(spark, tmp_path / "p2", rows("r2", ["c"]))
    assert writer.replace(tmp_path / "whole", [first]) == 0
    assert writer.replace(tmp_path / "whole", [second]) == 1
    assert [r[1] for r in content(tmp_path / "whole")] == ["c"]
    writer.replace_run(tmp_path / "runs", [first], "r1")
    writer.replace_run(tmp_path / "runs", [second], "r2")
    writer.replace_run(tmp_path / "runs", rows("r1", ["a"]), "r1")  # a rerun of r1
    assert sorted(r[:2] for r in content(tmp_path / "runs")) == [("r1", "a"), ("r2", "c")]


@pytest.mark.slow
def test_delta_spark_writer_publishes_the_same_tables(spark, tmp_path):
    if not delta_spark_available(spark):
        pytest.skip(NO_DELTA_JARS)
    writer = table_writer("delta-spark", spark)
    assert writer.name == "delta-spark"
    first = _spark_parquet(spark, tmp_path / "p1", rows("r1", ["a", "b"]))
    second = _spark_parquet(spark, tmp_path / "p2", rows("r2", ["c"]))
    v0 = writer.replace(tmp_path / "whole", [first])
    assert writer.replace(tmp_path / "whole", [second]) == v0 + 1
    # delta-rs reads what delta-spark wrote: the storefront's read path does not change.
    assert [r[1] for r in content(tmp_path / "whole")] == ["c"]
    writer.replace_run(tmp_path / "runs", [first], "r1")
    writer.replace_run(tmp_path / "runs", [second], "r2")
    writer.replace_run(tmp_path / "runs", rows("r1", ["a"]), "r1")
    assert sorted(r[:2] for r in content(tmp_path / "runs")) == [("r1", "a"), ("r2", "c")]
