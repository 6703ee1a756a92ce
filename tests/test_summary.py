"""The nightly summary's last lines: a few SKUs and their top similar items, from the published
tables (real Delta tables written with delta-rs; no Spark needed)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from deltalake import write_deltalake

from lookalike.cli import format_summary
from lookalike.config import Config
from lookalike.pipeline import RunContext, StageResult

RUN_DATE = dt.date(2026, 11, 23)


def _published(tmp_path, similar_rows, catalog_rows) -> RunContext:
    ctx = RunContext(Config().with_overrides(output={"root": str(tmp_path)}), RUN_DATE)
    write_deltalake(str(ctx.layout.table("similar_items")), pa.Table.from_pylist(similar_rows))
    write_deltalake(str(ctx.layout.table("catalog")), pa.Table.from_pylist(catalog_rows))
    return ctx


def _row(sku, rank, other, score, category):
    return {
        "sku_id": sku,
        "rank": rank,
        "similar_sku_id": other,
        "score": score,
        "category": category,
        "source": "category",
    }


def test_the_summary_ends_with_a_few_skus_and_their_top_items(tmp_path):
    similar = [
        _row(f"{c}-{i}", rank, f"{c}-{(i + rank) % 5}", 0.9 - rank / 10, c)
        for c in ("dresses", "hats", "shoes", "skirts")
        for i in range(5)
        for rank in (1, 2, 3, 4)
    ]
    catalog = [
        {"sku_id": f"{c}-{i}", "title": f"{c} number {i}"}
        for c in ("dresses", "hats", "shoes", "skirts")
        for i in range(5)
    ]
    catalog[0]["title"] = "line one\nline two\x1b[31m red\tand a very long title " + "x" * 80
    ctx = _published(tmp_path, similar, catalog)
    results = [StageResult("publish", {"similar_items": len(similar)}, 1.0)]

    text = format_summary(ctx, results, 12.3)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("similar items"))
    assert lines[start - 1] == ""
    shown = lines[start + 1 :]
    # Three SKUs (the first of the first three categories), three items each, with titles.
    assert [line.split()[:2] for line in shown if not line.startswith("     ")] == [
        ["dresses-0", "[dresses]"],
        ["hats-0", "[hats]"],
        ["shoes-0", "[shoes]"],
    ]
    assert len(shown) == 3 * 4
    assert shown[1].split() == ["1.", "dresses-1", "0.800", "dresses", "number", "1"]
    assert shown[3].split()[:3] == ["3.", "dresses-3", "0.600"]
    # A title prints as one line of printable text, cut at 60 characters.
    head = shown[0]
    assert "line one line two [31m red and a very long title" in head
    assert "\x1b" not in text and "\t" not in text and head.endswith("...")
    assert len(head.split("]  ", 1)[1]) == 60


def test_no_similar_items_section_without_a_publish_or_a_table(tmp_path):
    ctx = RunContext(Config().with_overrides(output={"root": str(tmp_path)}), RUN_DATE)
    ingest = [StageResult("ingest", {"valid": 3}, 1.0)]
    assert "similar items" not in format_summary(ctx, ingest, 1.0)
    # Published, but the table cannot be read: the summary still prints, without the section.
    publish = [StageResult("publish", {"similar_items": 0}, 1.0)]
    assert "similar items" not in format_summary(ctx, publish, 1.0)
