"""The recall estimate: measured by the neighbors stage, recorded, and gated before publishing.

Real index and neighbors stages on Spark local[2] over a run folder written here (random
32-d vectors: no structure, so a starved Annoy search really misses), then the publish
stage's gate check against the run's own stats.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lookalike.config import Config, GateSettings
from lookalike.pipeline import RunContext, run_stage
from lookalike.stages.gates import GateFailed, evaluate_gates
from lookalike.stages.publish import check_gates

N, DIM = 1500, 32


def _write_run(ctx: RunContext) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = pa.table(
        {
            "sku_id": [f"s{i:05d}" for i in range(N)],
            "category": ["big" if i < 1200 else "small" for i in range(N)],
            "is_active": [i % 10 != 0 for i in range(N)],
            "model_id": ["m1"] * N,
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        }
    )
    clusters = pa.table(
        {"cluster_id": pa.array([], pa.string()), "sku_id": pa.array([], pa.string())}
    )
    for name, table in (("embeddings", embeddings), ("duplicate_clusters", clusters)):
        folder = ctx.layout.work / name
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet")


def _context(tmp_path, **index) -> RunContext:
    config = Config().with_overrides(
        output={"root": str(tmp_path)},
        # Annoy: its effort (n_trees, search_k) is what starves the recall below.
        index={"exact_max_size": 500, "max_shard_size": 700, "kind": "annoy", **index},
        neighbors={"recall_queries": 40},
    )
    ctx = RunContext(config, dt.date(2026, 11, 23))
    _write_run(ctx)
    return ctx


@pytest.fixture(scope="module")
def starved(spark, tmp_path_factory):
    """One tree and the fewest nodes Annoy allows: recall well below the gate."""
    ctx = _context(tmp_path_factory.mktemp("starved"), n_trees=1, search_k=1)
    index = run_stage("index", spark, ctx)
    neighbors = run_stage("neighbors", spark, ctx)
    return ctx, index.counts, neighbors.counts


def test_the_stage_records_recall_per_annoy_shard(starved):
    ctx, index, counts = starved
    # "big" (1200) is split in two Annoy sub-shards of about 600; "small" (300) is exact.
    assert index == {
        "shards": 3,
        "exact_shards": 1,
        "annoy_shards": 2,
        "ivf_shards": 0,
        "categories": 2,
        "items": N,
    }
    by_shard = counts["recall_at_k_by_shard"]
    assert len(by_shard) == 2 and all(s.startswith("big-") for s in by_shard)
    assert counts["recall_queries"] == 80
    assert 0 < counts["recall_at_k"] < 0.9
    assert counts["recall_at_k_min"] == min(by_shard.values())
    # In the stats the runs record is made of, as JSON.
    stats = json.loads(ctx.layout.stats("neighbors").read_text())
    assert stats["counts"]["recall_at_k_by_shard"] == by_shard


def test_a_recall_below_the_gate_publishes_nothing(spark, starved):
    ctx, _, counts = starved
    with pytest.raises(GateFailed, match="recall_at_k") as excinfo:
        check_gates(spark, ctx)
    failed = {r.gate: r for r in excinfo.value.results if not r.passed}
    assert failed["recall_at_k"].value == pytest.approx(counts["recall_at_k"])
    assert failed["recall_at_k"].threshold == GateSettings().min_recall
    (record,) = DeltaTable(str(ctx.layout.table("runs"))).to_pyarrow_table().to_pylist()
    assert record["status"] == "gate_failed"
    gates = json.loads(record["gate_results"])
    assert gates["recall_at_k"]["passed"] is False
    assert not DeltaTable.is_deltatable(str(ctx.layout.table("similar_items")))


def test_the_default_search_measures_full_recall_and_passes(spark, tmp_path):
    ctx = _context(tmp_path)
    run_stage("index", spark, ctx)
    counts = run_stage("neighbors", spark, ctx).counts
    assert counts["recall_at_k"] >= 0.95
    results = {r.gate: r for r in check_gates(spark, ctx)}
    assert results["recall_at_k"].passed


def test_the_recall_gate_is_absent_when_not_measured(spark):
    similar = spark.createDataFrame(
        [("a", "b", 0.9)], "sku_id string, similar_sku_id string, score float"
    )
    embeddings = spark.createDataFrame([("a", True)], "sku_id string, is_active boolean")
    common = dict(
        k=1,
        similar_df=similar,
        embeddings_df=embeddings,
        previous_df=None,
        rows_read=1,
        rows_rejected=0,
    )
    assert "recall_at_k" not in {r.gate for r in evaluate_gates(GateSettings(), **common)}
    measured = {
        r.gate: r for r in evaluate_gates(GateSettings(min_recall=0.95), recall=0.94, **common)
    }
    assert measured["recall_at_k"].passed is False
