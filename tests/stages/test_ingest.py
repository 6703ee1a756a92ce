"""Ingest validation: every row lands in the catalog or in rejects, with a reason; a snapshot
with nothing valid fails the run before anything is published."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import functions as F

from lookalike import tables
from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage
from lookalike.stages import embed, ingest
from lookalike.stages.embed import EMBEDDINGS_COLUMNS
from lookalike.stages.ingest import (
    CATALOG_SCHEMA,
    REJECTS_SCHEMA,
    CatalogError,
    read_catalog,
    validate_catalog,
)

pytestmark = pytest.mark.slow

COLUMNS = ["sku_id", "category", "image_uri", "is_active", "title", "updated_at"]


def _raw(spark, rows):
    return spark.createDataFrame(rows, ", ".join(f"{c} string" for c in COLUMNS))


def test_valid_rows_are_normalised(spark):
    raw_df = _raw(
        spark,
        [
            (" A1 ", "mugs ", "images/a1.jpg", "TRUE", "Blue mug", "2026-01-02 03:04:05"),
            ("A2", "mugs", "/cat/images/a2.jpg", "no", None, None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    expected_df = spark.createDataFrame(
        [
            (
                "A1",
                "mugs",
                "/cat/images/a1.jpg",
                "Blue mug",
                True,
                dt.datetime(2026, 1, 2, 3, 4, 5),
            ),
            ("A2", "mugs", "/cat/images/a2.jpg", None, False, None),
        ],
        "sku_id string, category string, image_uri string, title string, is_active boolean, "
        "updated_at timestamp",
    )
    assert_df_equality(catalog_df, expected_df, ignore_row_order=True, ignore_nullable=True)
    assert rejects_df.count() == 0


def test_every_bad_row_is_rejected_with_its_reason(spark):
    raw_df = _raw(
        spark,
        [
            (None, "mugs", "a.jpg", "true", None, None),
            ("  ", "mugs", "a.jpg", "true", None, None),
            ("D", "mugs", "d1.jpg", "true", None, None),
            ("D", "mugs", "d2.jpg", "true", None, None),
            ("C", "", "c.jpg", "true", None, None),
            ("N", None, "n.jpg", "true", None, None),
            ("U", "mugs", None, "true", None, None),
            ("X", "mugs", "../../../etc/passwd", "true", None, None),
            ("Y", "mugs", "images/../../outside.jpg", "true", None, None),
            ("Z", "mugs", "/etc/passwd", "true", None, None),
            ("P", "mugs", "/cat-evil/p.jpg", "true", None, None),
            ("I", "mugs", "i.jpg", "maybe", None, None),
            ("J", "mugs", "j.jpg", None, None, None),
            ("T", "mugs", "t.jpg", "true", None, "yesterday"),
            ("OK", "mugs", "images/ok.jpg", "1", "<script>alert(1)</script>", None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    expected_df = spark.createDataFrame(
        [
            (None, "missing_sku_id"),
            (None, "missing_sku_id"),
            ("D", "duplicate_sku_id"),
            ("D", "duplicate_sku_id"),
            ("C", "missing_category"),
            ("N", "missing_category"),
            ("U", "missing_image_uri"),
            ("X", "image_outside_roots"),
            ("Y", "image_outside_roots"),
            ("Z", "image_outside_roots"),
            ("P", "image_outside_roots"),
            ("I", "invalid_is_active"),
            ("J", "invalid_is_active"),
            ("T", "invalid_updated_at"),
        ],
        "sku_id string, reason string",
    )
    assert_df_equality(
        rejects_df.select("sku_id", "reason"),
        expected_df,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert [r.sku_id for r in catalog_df.collect()] == ["OK"]
    # Nothing silently dropped: every input row is in exactly one output.
    assert catalog_df.count() + rejects_df.count() == raw_df.count()
    rejects = {r.sku_id: r for r in rejects_df.collect()}
    assert "2 times" in rejects["D"].detail
    assert "/etc/passwd" in rejects["X"].detail
    assert "maybe" in rejects["I"].detail
    # The raw row travels with the reject, for whoever fixes the feed.
    assert '"image_uri":"../../../etc/passwd"' in rejects["X"].record
    assert rejects_df.filter(F.col("run_id") != "r1").count() == 0
    assert rejects_df.filter(F.col("stage") != "ingest").count() == 0


def test_image_roots_are_configurable(spark):
    raw_df = _raw(
        spark,
        [
            ("A", "mugs", "/photos/a.jpg", "true", None, None),
            ("B", "mugs", "images/b.jpg", "true", None, None),
            ("S", "mugs", "s3://bucket/img/s.jpg", "true", None, None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir="/cat", image_roots=["/photos", "s3://bucket/img"]
    )
    assert sorted(r.sku_id for r in catalog_df.collect()) == ["A", "S"]
    expected_df = spark.createDataFrame(
        [("B", "image_outside_roots")], "sku_id string, reason string"
    )
    assert_df_equality(rejects_df.select("sku_id", "reason"), expected_df, ignore_nullable=True)


def test_csv_with_quoted_multiline_titles(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text(
        "sku_id,category,image_uri,title,is_active\n"
        'A,mugs,a.jpg,"Mug, blue ""large""\nsecond line",true\n'
        "B,mugs,b.jpg,,false\n"
    )
    raw_df = read_catalog(spark, str(path))
    rows = {r.sku_id: r for r in raw_df.collect()}
    assert rows["A"].title == 'Mug, blue "large"\nsecond line'
    assert rows["B"].title is None
    assert rows["A"].updated_at is None  # optional column added when absent


def test_missing_required_column_is_an_error_naming_it(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("sku_id,category,title\nA,mugs,x\n")
    with pytest.raises(CatalogError, match="image_uri, is_active"):
        read_catalog(spark, str(path))


def test_missing_catalog_file_is_an_error_naming_it(spark, tmp_path):
    with pytest.raises(CatalogError, match="nope.csv"):
        read_catalog(spark, str(tmp_path / "nope.csv"))


def test_parquet_catalog_with_typed_columns(spark, tmp_path):
    # A user's Parquet file has real booleans and timestamps; ingest reads it like the CSV.
    import pandas as pd

    path = tmp_path / "catalog.parquet"
    pd.DataFrame(
        {
            "sku_id": ["A", "B"],
            "category": ["mugs", "mugs"],
            "image_uri": ["images/a.jpg", "images/b.jpg"],
            "title": ["Mug", None],
            "is_active": [True, False],
            "updated_at": pd.to_datetime(["2026-01-02 03:04:05", None]),
        }
    ).to_parquet(path)
    raw_df = read_catalog(spark, str(path))
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir=str(tmp_path), image_roots=[]
    )
    rows = {r.sku_id: r for r in catalog_df.collect()}
    assert rejects_df.count() == 0
    assert rows["A"].is_active is True and rows["B"].is_active is False
    assert rows["A"].updated_at == dt.datetime(2026, 1, 2, 3, 4, 5)
    assert rows["B"].updated_at is None
    assert rows["A"].image_uri == str(tmp_path / "images" / "a.jpg")


def test_control_characters_in_ids_and_categories_are_rejected(spark):
    raw_df = _raw(
        spark,
        [
            ("A\x00", "mugs", "a.jpg", "true", None, None),
            ("  B\x1f", "mugs", "b.jpg", "true", None, None),
            ("C\x7fc", "mugs", "c.jpg", "true", None, None),
            ("\tD", "mugs", "d.jpg", "true", None, None),
            ("E", "mu\ngs", "e.jpg", "true", None, None),
            ("F", "\rmugs", "f.jpg", "true", None, None),
            # Not control characters: a space inside, a non-breaking space, accents, emoji.
            ("G 1", "mugs\u00a0& cups", "g.jpg", "true", "Tasse caf\u00e9 \u2615", None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    rejects = {r.record: r for r in rejects_df.collect()}
    got = {json.loads(record)["sku_id"]: (r.reason, r.detail) for record, r in rejects.items()}
    assert got == {
        "A\x00": ("invalid_sku_id", "sku_id holds control character U+0000 at position 2"),
        # The position is in the value as sent, before trimming.
        "  B\x1f": ("invalid_sku_id", "sku_id holds control character U+001F at position 4"),
        "C\x7fc": ("invalid_sku_id", "sku_id holds control character U+007F at position 2"),
        "\tD": ("invalid_sku_id", "sku_id holds control character U+0009 at position 1"),
        "E": ("invalid_category", "category holds control character U+000A at position 3"),
        "F": ("invalid_category", "category holds control character U+000D at position 1"),
    }
    # The record is the raw row (JSON escapes the character); the detail never carries it.
    assert any(record.startswith('{"sku_id":"A\\u0000"') for record in rejects)
    for r in rejects.values():
        assert not re.search(r"[\x00-\x1f\x7f]", r.detail)
    expected_df = spark.createDataFrame(
        [("G 1", "mugs\u00a0& cups")], "sku_id string, category string"
    )
    assert_df_equality(catalog_df.select("sku_id", "category"), expected_df, ignore_nullable=True)


def test_ids_are_trimmed_before_every_check_duplicates_included(spark):
    raw_df = _raw(
        spark,
        [
            (" A1", "mugs", "a.jpg", "true", None, None),
            ("A1", "mugs", "b.jpg", "true", None, None),
            ("B1  ", " cups ", "c.jpg", "true", None, None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    expected_df = spark.createDataFrame(
        [("A1", "duplicate_sku_id"), ("A1", "duplicate_sku_id")], "sku_id string, reason string"
    )
    assert_df_equality(
        rejects_df.select("sku_id", "reason"),
        expected_df,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    # The reject keeps the id as sent in its record.
    assert {json.loads(r.record)["sku_id"] for r in rejects_df.collect()} == {" A1", "A1"}
    expected_df = spark.createDataFrame([("B1", "cups")], "sku_id string, category string")
    assert_df_equality(catalog_df.select("sku_id", "category"), expected_df, ignore_nullable=True)


def test_overlong_sku_ids_are_rejected(spark):
    raw_df = _raw(
        spark,
        [
            ("x" * 256, "mugs", "a.jpg", "true", None, None),
            ("y" * 257, "mugs", "b.jpg", "true", None, None),
            # Counted in characters, not bytes: 256 two-byte characters are fine.
            ("\u00e9" * 256, "mugs", "c.jpg", "true", None, None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    assert sorted(len(r.sku_id) for r in catalog_df.collect()) == [256, 256]
    (reject,) = rejects_df.collect()
    assert reject.reason == "sku_id_too_long"
    assert reject.detail == "sku_id is 257 characters long, over catalog.max_sku_id_length 256"
    # The limit is a setting.
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir="/cat", image_roots=[], max_sku_id_length=10
    )
    assert catalog_df.count() == 0
    assert {r.reason for r in rejects_df.collect()} == {"sku_id_too_long"}
    with pytest.raises(ValueError, match="max_sku_id_length must be >= 1, got 0"):
        validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[], max_sku_id_length=0)


def test_titles_are_kept_as_sent_except_nul(spark):
    long_title = "Mug " + '\u00e9t\u00e9, "quoted"\n' * 8_000  # about 100 kB
    raw_df = _raw(
        spark,
        [
            ("A", "mugs", "a.jpg", "true", "a\x00b\tc\r\nd\x01", None),
            ("B", "mugs", "b.jpg", "true", long_title, None),
            ("C", "mugs", "c.jpg", "true", None, None),
            ("D", "mugs", "d.jpg", "true", "  =padded  ", None),
        ],
    )
    catalog_df, rejects_df = validate_catalog(raw_df, run_id="r1", base_dir="/cat", image_roots=[])
    assert rejects_df.count() == 0
    # NUL removed (downstream stores refuse it); tabs, line breaks, other characters kept.
    expected_df = spark.createDataFrame(
        [("A", "ab\tc\r\nd\x01"), ("B", long_title), ("C", None), ("D", "  =padded  ")],
        "sku_id string, title string",
    )
    assert_df_equality(
        catalog_df.select("sku_id", "title"),
        expected_df,
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_csv_with_bom_crlf_and_a_100kb_quoted_multiline_title(spark, tmp_path):
    long_title = ('Mug, blue "large"\nsecond line ' * 3_500)[:100_000]
    quoted = long_title.replace('"', '""')
    path = tmp_path / "catalog.csv"
    path.write_bytes(
        (
            "\ufeffsku_id,category,image_uri,title,is_active\r\n"
            f'A,mugs,a.jpg,"{quoted}",true\r\n'
            "B,mugs,b.jpg,plain,false\r\n"
        ).encode()
    )
    raw_df = read_catalog(spark, str(path))
    assert raw_df.columns[0] == "sku_id"  # the BOM is not part of the first name
    catalog_df, rejects_df = validate_catalog(
        raw_df, run_id="r1", base_dir=str(tmp_path), image_roots=[]
    )
    assert rejects_df.count() == 0
    rows = {r.sku_id: r for r in catalog_df.collect()}
    assert rows["A"].title == long_title and len(rows["A"].title) == 100_000
    # The CRLF line ends leave no carriage return in the last column or the title's end.
    assert rows["A"].is_active is True and rows["B"].is_active is False
    assert rows["B"].title == "plain"


def test_an_empty_file_is_an_error_saying_so(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("")
    with pytest.raises(CatalogError, match="catalog .*catalog.csv is empty: no header row"):
        read_catalog(spark, str(path))


# --- a snapshot with nothing valid fails the run and publishes nothing ----------------------

HEADER = "sku_id,category,image_uri,title,is_active\n"
RUN_DATE = dt.date(2026, 11, 23)


def _table_versions(tables_dir: Path) -> dict[str, int]:
    return {p.name: DeltaTable(str(p)).version() for p in sorted(tables_dir.iterdir())}


@pytest.fixture
def published_run(spark, tmp_path) -> RunContext:
    """A good ingest of RUN_DATE, its catalog published as the Delta table ``catalog``."""
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "good.csv").write_text(HEADER + "A,mugs,a.jpg,Mug,true\nB,mugs,b.jpg,Cup,false\n")
    config = Config().with_overrides(
        catalog={"path": str(shop / "good.csv")}, output={"root": str(tmp_path / "out")}
    )
    ctx = RunContext(config, RUN_DATE)
    assert ingest.run(spark, ctx) == {"rows_read": 2, "valid": 2, "rejected": 0}
    tables.publish_files(ctx.layout.table("catalog"), [ctx.layout.catalog])
    tables.publish_files(ctx.layout.table("catalog"), [ctx.layout.catalog])
    assert _table_versions(Path(str(ctx.layout.tables))) == {"catalog": 1}
    return ctx


def test_an_all_rejected_catalog_fails_ingest_with_the_counts_and_publishes_nothing(
    spark, published_run
):
    ctx = published_run
    bad = Path(ctx.config.catalog.path).parent / "bad.csv"
    bad.write_text(HEADER + "D,mugs,d.jpg,x,true\nD,mugs,e.jpg,x,true\n,mugs,f.jpg,x,true\n")
    (bad.parent / "bad2.csv").write_text(
        HEADER + "N,,n.jpg,x,true\nM, ,m.jpg,x,true\nC\x00,mugs,c.jpg,x,true\n"
    )
    # A rerun of the same date with a broken feed.
    for path, reasons in [
        (bad, "2 duplicate_sku_id, 1 missing_sku_id"),
        (bad.parent / "bad2.csv", "2 missing_category, 1 invalid_sku_id"),
    ]:
        rerun = RunContext(ctx.config.with_overrides(catalog={"path": str(path)}), RUN_DATE)
        with pytest.raises(CatalogError) as failed:
            run_stage("ingest", spark, rerun)
        assert str(failed.value).startswith(
            f"all 3 rows of catalog {path} were rejected: {reasons} (see "
        )
        assert "nothing was published" in str(failed.value)
        # The rejects are there to read; the earlier try's catalog is gone, so no later stage
        # can work from it; the stage recorded no stats.
        assert spark.read.parquet(str(rerun.layout.rejects("ingest"))).count() == 3
        assert not rerun.layout.catalog.exists()
        assert not rerun.layout.stats("ingest").exists()
        with pytest.raises(FileNotFoundError, match="run the stage that writes it before 'embed'"):
            embed.run(spark, rerun)
    assert _table_versions(Path(str(ctx.layout.tables))) == {"catalog": 1}


def test_a_header_only_catalog_fails_the_nightly_run_with_exit_code_1(published_run, tmp_path):
    ctx = published_run
    empty = tmp_path / "shop" / "empty.csv"
    empty.write_text(HEADER)
    conf = tmp_path / "conf.yaml"
    conf.write_text("spark:\n  master: local[1]\n  conf:\n    spark.ui.enabled: 'false'\n")
    # In its own process, as the scheduler runs it (the CLI stops its Spark session).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lookalike",
            "nightly",
            "--conf",
            str(conf),
            "--run-date",
            RUN_DATE.isoformat(),
            "--catalog",
            str(empty),
            "--output",
            str(ctx.config.output_root),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        f"lookalike: run {RUN_DATE} failed: CatalogError: catalog {empty} has no rows: "
        "a header only, or an empty file; nothing was published"
    ) in done.stderr
    assert "TypeError" not in done.stderr
    assert _table_versions(Path(str(ctx.layout.tables))) == {"catalog": 1}
    assert not ctx.layout.catalog.exists()


def test_embed_of_an_empty_catalog_writes_empty_outputs(spark, tmp_path):
    # Ingest refuses an empty catalog; a run folder made by hand may still hold one.
    config = Config().with_overrides(
        catalog={"path": str(tmp_path / "catalog.csv")}, output={"root": str(tmp_path / "out")}
    )
    ctx = RunContext(config, RUN_DATE)
    spark.createDataFrame([], CATALOG_SCHEMA).write.parquet(str(ctx.layout.catalog))
    counts = embed.run(spark, ctx)
    assert {k: v for k, v in counts.items() if k != "worker_peak_rss_mb"} == {
        "images": 0,
        "vectors": 0,
        "embedded": 0,
        "reused": 0,
        "reused_by_listing": 0,
        "reused_by_content": 0,
        "hashed": 0,
        "bytes_hashed": 0,
        "http_downloads": 0,
        "http_not_modified": 0,
        "http_bytes": 0,
        "rejected": 0,
    }
    embeddings_df = spark.read.parquet(str(ctx.layout.embeddings))
    assert tuple(embeddings_df.columns) == EMBEDDINGS_COLUMNS
    assert embeddings_df.count() == 0
    rejects_df = spark.read.parquet(str(ctx.layout.rejects("embed")))
    assert rejects_df.columns == REJECTS_SCHEMA.fieldNames()
