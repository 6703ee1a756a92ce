"""Publishing behind quality gates, rollback, and the storefront's read command.

Real Delta tables (delta-rs), a real nightly run through the CLI, a real network whose
checkpoint makes every vector the same (what a broken model looks like).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torchvision
from deltalake import DeltaTable

from demo.catalog import generate_demo_catalog
from lookalike.cli import main
from lookalike.core.backbones import CHECKPOINT_FORMAT
from lookalike.tables import write_table


def _similar(run_id: str, pairs: list[tuple[str, str, float]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "sku_id": a,
                "rank": 1,
                "similar_sku_id": b,
                "score": s,
                "category": "mugs",
                "model_id": "m",
                "run_id": run_id,
            }
            for a, b, s in pairs
        ]
    )


def _runs_row(run_id: str, versions: dict[str, int], status: str = "published") -> pa.Table:
    return pa.Table.from_pylist(
        [{"run_id": run_id, "status": status, "table_versions": json.dumps(versions)}]
    )


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """Two published runs: similar_items versions 0 (run A) and 1 (run B)."""
    tables = tmp_path / "out" / "tables"
    write_table(tables / "similar_items", _similar("A", [("s1", "s2", 0.9)]))
    write_table(tables / "runs", _runs_row("A", {"similar_items": 0}), replace_where="run_id = 'A'")
    write_table(tables / "similar_items", _similar("B", [("s1", "s3", 0.8), ("s2", "s3", 0.7)]))
    write_table(tables / "runs", _runs_row("B", {"similar_items": 1}), replace_where="run_id = 'B'")
    write_table(tables / "runs", _runs_row("C", {}, "gate_failed"), replace_where="run_id = 'C'")
    return tmp_path / "out"


def _rows(path: Path) -> list[tuple]:
    table = DeltaTable(str(path)).to_pyarrow_table().sort_by("sku_id")
    columns = (table[c].to_pylist() for c in ("sku_id", "similar_sku_id", "run_id"))
    return list(zip(*columns, strict=True))


def test_rollback_to_a_run_restores_what_it_published(published: Path, capsys):
    similar = published / "tables" / "similar_items"
    assert _rows(similar) == [("s1", "s3", "B"), ("s2", "s3", "B")]
    code = main(
        ["rollback", "--to-run", "A", "--table", "similar_items", "--output", str(published)]
    )
    assert code == 0
    assert _rows(similar) == [("s1", "s2", "A")]
    # A rollback is a new version: history is kept, so it can be undone.
    assert DeltaTable(str(similar)).version() == 2
    assert "restored similar_items: now version 2" in capsys.readouterr().out
    assert (
        main(
            [
                "rollback",
                "--table",
                "similar_items",
                "--to-version",
                "1",
                "--output",
                str(published),
            ]
        )
        == 0
    )
    assert _rows(similar) == [("s1", "s3", "B"), ("s2", "s3", "B")]


def test_rollback_refuses_unknown_or_unpublished_runs(published: Path, capsys):
    out = str(published)
    assert main(["rollback", "--to-run", "Z", "--table", "similar_items", "--output", out]) == 2
    assert "no run Z in the runs record" in capsys.readouterr().err
    assert main(["rollback", "--to-run", "C", "--table", "similar_items", "--output", out]) == 2
    assert "did not publish (status gate_failed)" in capsys.readouterr().err
    assert main(["rollback", "--table", "similar_items", "--to-version", "9", "--output", out]) == 2
    assert "no version 9" in capsys.readouterr().err


def test_run_record_command_shows_a_runs_status(published: Path, capsys):
    assert main(["run-record", "C", "--output", str(published)]) == 0
    assert '"status": "gate_failed"' in capsys.readouterr().out
    assert main(["run-record", "D", "--output", str(published)]) == 1


def test_similar_command_prints_a_skus_published_neighbors(published: Path, capsys):
    assert main(["similar", "s2", "--output", str(published)]) == 0
    out = capsys.readouterr().out
    assert "similar items of s2" in out and "s3" in out and "0.700" in out
    assert main(["similar", "nobody", "--output", str(published)]) == 1


@pytest.mark.slow
def test_a_model_returning_constant_vectors_fails_a_gate_and_publishes_nothing(
    tmp_path: Path, pretrained_weights, capsys
):
    # A real network whose projection ignores the image: every vector is the same.
    projection = torch.nn.Linear(1280, 16)
    torch.nn.init.zeros_(projection.weight)
    torch.nn.init.ones_(projection.bias)
    backbone = torchvision.models.mobilenet_v2(weights=None)
    backbone.classifier = torch.nn.Identity()
    checkpoint = tmp_path / "constant.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "backbone": "mobilenet_v2",
            "state_dict": backbone.state_dict(),
            "projection": projection.state_dict(),
        },
        checkpoint,
    )
    demo = generate_demo_catalog(tmp_path / "demo", n_products=24)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"spark:\n  master: local[2]\n  conf:\n    spark.ui.enabled: 'false'\n"
        f"output:\n  root: {tmp_path / 'out'}\nmodel:\n  checkpoint: {checkpoint}\n"
        f"neighbors:\n  k: 3\n"
    )
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
            "2026-11-23",
            "--catalog",
            str(demo.catalog_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    # Every SKU looks like every other: one giant duplicate cluster per category, so no SKU
    # has similar items left. A category that is one product owes nobody an item (coverage
    # reads complete), so the spread gate is what stops the run: no best score at all.
    assert "top1_score_spread = 0" in done.stderr
    tables = tmp_path / "out" / "tables"
    # Nothing the storefront reads was written; only the runs record says what happened.
    assert sorted(p.name for p in tables.iterdir()) == ["runs"]
    record = DeltaTable(str(tables / "runs")).to_pyarrow_table().to_pylist()
    assert len(record) == 1 and record[0]["status"] == "gate_failed"
    gates = json.loads(record[0]["gate_results"])
    assert gates["top1_score_spread"]["passed"] is False
    assert gates["top1_score_spread"]["value"] == 0.0
    assert gates["reject_rate"]["passed"] is True


def _gates_of(spark, scores, previous=None, active=("a", "b", "c"), k=2):
    from lookalike.config import GateSettings
    from lookalike.stages.gates import evaluate_gates

    schema = "sku_id string, similar_sku_id string, score float"
    similar = spark.createDataFrame(scores, schema)
    embeddings = spark.createDataFrame(
        [(s, True) for s in active], "sku_id string, is_active boolean"
    )
    results = evaluate_gates(
        GateSettings(),
        k=k,
        similar_df=similar,
        embeddings_df=embeddings,
        previous_df=None if previous is None else spark.createDataFrame(previous, schema),
        rows_read=10,
        rows_rejected=1,
    )
    return {r.gate: r for r in results}


@pytest.mark.slow
def test_gates_measure_coverage_spread_shift_and_churn(spark):
    flat = [(s, o, 1.0) for s in "abc" for o in "abc" if o != s]
    gates = _gates_of(spark, flat)
    assert gates["full_topk_share"].value == 1.0 and gates["full_topk_share"].passed
    assert (
        gates["top1_score_spread"].value == pytest.approx(0.0)
        and not gates["top1_score_spread"].passed
    )
    assert gates["reject_rate"].value == pytest.approx(0.1) and gates["reject_rate"].passed
    assert "topk_churn" not in gates  # nothing published before: nothing to compare with

    today = [("a", "b", 0.9), ("a", "c", 0.5), ("b", "a", 0.6), ("c", "a", 0.7)]
    before = [("a", "b", 0.8), ("a", "x", 0.4), ("b", "y", 0.5)]
    gates = _gates_of(spark, today, previous=before)
    # b and c lack a second neighbor: 1 of 3 active SKUs has the full K = 2.
    assert gates["full_topk_share"].value == pytest.approx(1 / 3)
    # Median best score: today (0.6, 0.7, 0.9) -> 0.7; before (0.5, 0.8) -> 0.5 (approx. median).
    assert gates["top1_score_shift"].value == pytest.approx(0.2, abs=1e-6)
    # a kept 1 of 2, b kept 0 of 1; c was not published before.
    assert gates["topk_churn"].value == pytest.approx((0.5 + 1.0) / 2)
