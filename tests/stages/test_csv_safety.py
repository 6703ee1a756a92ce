"""CSV exports open in a spreadsheet as text, never as formulas (OWASP CSV injection); the tables
and the page keep the true text."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from lookalike import tables
from lookalike.config import Config
from lookalike.csvsafe import spreadsheet_safe, spreadsheet_safe_frame
from lookalike.pipeline import RunContext
from lookalike.stages import ingest, mismatches, report, shared_photos, styles
from lookalike.stages.report import MEMBER_COLUMNS, MISMATCH_COLUMNS
from lookalike.stages.report_page import write_duplicate_report

HYPERLINK = '=HYPERLINK("http://evil.example","click me")'
DDE = "+cmd|' /C calc'!A0"
FORMULA_TITLES = (HYPERLINK, DDE, "-2+3", "@SUM(A1)", "\t=1", "\r=1")
# A bare carriage return inside a title must not split its row (RFC 4180 quoting).
ORDINARY_TITLES = ('Mug, blue "large"\nsecond line', "old\rMac", "a = b", "100% cotton", "")
RUN_ID = "2026-11-23"


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("value", FORMULA_TITLES)
def test_formula_text_gets_a_leading_quote(value: str) -> None:
    assert spreadsheet_safe(value) == "'" + value


@pytest.mark.parametrize(
    "value", [*ORDINARY_TITLES, "'=already quoted", " =1", None, -2.5, 3, True, float("nan")]
)
def test_other_values_are_unchanged(value: object) -> None:
    # Numbers are not text: a negative score stays a number (and NaN stays NaN).
    got = spreadsheet_safe(value)
    assert got is value


def test_frame_neutralises_text_cells_only() -> None:
    frame = pd.DataFrame(
        {
            "title": ["=1", "ok", None],
            "score": [-0.5, 0.25, float("nan")],
            "mixed": ["-x", -1, True],  # an object column: text, a number, a boolean
        }
    )
    safe = spreadsheet_safe_frame(frame)
    assert safe["title"].tolist() == ["'=1", "ok", None]
    assert safe["score"].dtype == frame["score"].dtype
    assert safe["score"].iloc[0] == -0.5
    assert safe["mixed"].tolist() == ["'-x", -1, True]
    # The caller's frame is not changed.
    assert frame["title"].iloc[0] == "=1"


def _member(sku_id: str, title: object, *, canonical: str = "C0", category: str = "mugs") -> dict:
    return {
        "cluster_id": "k1",
        "sku_id": sku_id,
        "canonical_sku_id": canonical,
        "category": category,
        "title": title,
        "image_uri": "/nowhere/x.jpg",
        "is_active": True,
        "evidence": "embedding",
        "score": -0.125 if sku_id != canonical else 1.0,
        "phash_distance": 3,
        "min_score": -0.125,
        "run_id": RUN_ID,
    }


def test_report_csvs_neutralise_every_formula_cell(tmp_path: Path) -> None:
    titles = [*FORMULA_TITLES, *ORDINARY_TITLES, None]
    members = pd.DataFrame(
        [_member("C0", "canonical")]
        + [_member(f"S{i}", title) for i, title in enumerate(titles)]
        + [_member("=EVIL()", "id and category", category="@cat")],
        columns=list(MEMBER_COLUMNS),
    )
    flagged = pd.DataFrame(
        [
            {
                "sku_id": "-M1",
                "category": "=mugs",
                "suggested_category": "+cups",
                "suggested_share": 0.8,
                "own_share": 0.0,
                "suggested_score": 0.7,
                "own_best_score": -0.25,
                "neighbour_sku_ids": ["=N1", "N2"],
                "neighbour_categories": ["@c", "cups"],
                "title": HYPERLINK,
                "image_uri": "/nowhere/m.jpg",
                "run_id": RUN_ID,
            }
        ],
        columns=list(MISMATCH_COLUMNS),
    )
    paths = write_duplicate_report(members, tmp_path, run_id=RUN_ID, mismatches=flagged)

    rows = {row["sku_id"]: row for row in _read_csv(paths.csv)}
    for i, title in enumerate(FORMULA_TITLES):
        assert rows[f"S{i}"]["title"] == "'" + title
    for i, title in enumerate(ORDINARY_TITLES, start=len(FORMULA_TITLES)):
        assert rows[f"S{i}"]["title"] == title
    assert rows[f"S{len(titles) - 1}"]["title"] == ""  # no title: an empty cell, not "'"
    evil = rows["'=EVIL()"]
    assert evil["category"] == "'@cat"
    # Scores are numbers, negative ones too: no quote, and pandas reads them as floats.
    assert rows["S0"]["score"] == "-0.125" and rows["S0"]["min_score"] == "-0.125"
    assert pd.read_csv(paths.csv)["score"].dtype.kind == "f"

    (row,) = _read_csv(paths.mismatches_csv)
    assert row["sku_id"] == "'-M1"
    assert row["category"] == "'=mugs"
    assert row["suggested_category"] == "'+cups"
    assert row["neighbour_sku_ids"] == "'=N1|N2"
    assert row["neighbour_categories"] == "'@c|cups"
    assert row["title"] == "'" + HYPERLINK
    assert row["own_best_score"] == "-0.25"
    # No cell of either file starts a formula.
    for path in (paths.csv, paths.mismatches_csv):
        for record in _read_csv(path):
            for name, cell in record.items():
                if name not in ("score", "min_score", "own_best_score"):
                    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)

    # The page shows the true text, escaped (no quote added there).
    page = paths.html.read_text()
    assert "=HYPERLINK(&#34;http://evil.example&#34;,&#34;click me&#34;)" in page
    assert "&#39;=HYPERLINK" not in page and "'=HYPERLINK" not in page


@pytest.mark.slow
def test_the_stages_keep_the_true_text_and_the_csv_is_safe(spark, tmp_path: Path) -> None:
    """Through the real ingest and report stages; the published catalog keeps the raw title."""
    catalog_path = tmp_path / "shop" / "catalog.parquet"
    catalog_path.parent.mkdir()
    titles = {"=A": HYPERLINK, "B": "\r=1", "C": "Blue mug", "D": "\t=1"}
    pd.DataFrame(
        {
            "sku_id": list(titles),
            "category": ["=cat", "mugs", "mugs", "mugs"],
            "image_uri": [f"images/{s}.jpg" for s in "ABCD"],
            "title": list(titles.values()),
            "is_active": [True] * 4,
        }
    ).to_parquet(catalog_path)
    config = Config().with_overrides(
        catalog={"path": str(catalog_path)}, output={"root": str(tmp_path / "out")}
    )
    ctx = RunContext(config, dt.date.fromisoformat(RUN_ID))
    assert ingest.run(spark, ctx) == {"rows_read": 4, "valid": 4, "rejected": 0}

    # The duplicates and mismatches stages' outputs, as they write them (a cluster of all four).
    members = [
        ("k1", sku, "=A", cat, "embedding", score, 2, -0.5, RUN_ID)
        for sku, cat, score in [("=A", "=cat", 1.0), ("B", "mugs", -0.5), ("C", "mugs", 0.9)]
    ]
    spark.createDataFrame(
        members,
        "cluster_id string, sku_id string, canonical_sku_id string, category string, "
        "evidence string, score float, phash_distance int, min_score float, run_id string",
    ).write.parquet(str(ctx.layout.duplicate_clusters))
    spark.createDataFrame(
        [("D", "mugs", "=cat", 0.75, 0.0, 0.5, -0.25, ["=A"], ["=cat"], "m", RUN_ID)],
        mismatches.MISMATCH_SCHEMA,
    ).write.parquet(str(ctx.layout.category_mismatches))
    # No listing without a photo of its own: the duplicates stage writes an empty frame.
    spark.createDataFrame([], shared_photos.SHARED_PHOTOS_SCHEMA).write.parquet(
        str(ctx.layout.shared_photos)
    )
    # One same-style group of "=A" and "C", as the styles stage writes it.
    spark.createDataFrame(
        [
            ("style-1", "=cat", sku, sku == "=A", "=A", 2, 0.9, 0.95, "m", RUN_ID)
            for sku in ("=A", "C")
        ],
        styles.STYLE_GROUPS_SCHEMA,
    ).write.parquet(str(ctx.layout.style_groups))
    counts = report.run(spark, ctx)
    assert counts == {
        "clusters_shown": 1,
        "listings_shown": 3,
        "mismatches_shown": 1,
        "shared_photo_groups_shown": 0,
        "style_groups_shown": 1,
    }

    report_dir = Path(str(ctx.layout.report_dir))
    rows = {row["sku_id"]: row for row in _read_csv(report_dir / "duplicates.csv")}
    assert set(rows) == {"'=A", "B", "C"}
    assert rows["'=A"]["title"] == "'" + HYPERLINK
    assert rows["'=A"]["canonical_sku_id"] == "'=A" and rows["B"]["canonical_sku_id"] == "'=A"
    assert rows["'=A"]["category"] == "'=cat"
    assert rows["B"]["title"] == "'\r=1"
    assert rows["C"]["title"] == "Blue mug"
    assert rows["B"]["score"] == "-0.5"
    (flag,) = _read_csv(report_dir / "category_mismatches.csv")
    assert flag["title"] == "'\t=1"
    assert flag["suggested_category"] == "'=cat"
    assert flag["neighbour_sku_ids"] == "'=A"
    assert flag["own_best_score"] == "-0.25"
    style_rows = _read_csv(report_dir / "style_groups.csv")
    assert [r["sku_id"] for r in style_rows] == ["'=A", "C"]  # the representative first
    assert style_rows[0]["title"] == "'" + HYPERLINK
    assert style_rows[0]["representative_sku_id"] == "'=A" and style_rows[0]["category"] == "'=cat"
    assert style_rows[1]["similarity"] == "0.95"

    # The run's Parquet and the published Delta table hold the true text.
    published = tables.publish_files(ctx.layout.table("catalog"), [ctx.layout.catalog])
    assert published == 0
    table = DeltaTable(str(ctx.layout.table("catalog"))).to_pandas().set_index("sku_id")
    assert table.loc["=A", "title"] == HYPERLINK
    assert table.loc["=A", "category"] == "=cat"
    assert table.loc["B", "title"] == "\r=1"
    assert table.loc["D", "title"] == "\t=1"
