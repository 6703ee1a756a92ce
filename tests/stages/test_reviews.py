"""Merchandisers' review decisions: kept across runs, honoured by the duplicates stage.

A real run (ingest, embed, index, duplicates) on a small generated catalogue with planted
duplicates; a `not_duplicate` review written through the CLI's function into a real Delta
table, and two `canonical` choices in another cluster (the later one on a listing the rule
would not choose); then a rerun of the same date.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from deltalake import DeltaTable

from demo.catalog import generate_demo_catalog
from lookalike.cli import main
from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage
from lookalike.reviews import record_canonical, record_review

pytestmark = pytest.mark.slow

RUN_DATE = dt.date(2026, 11, 20)
STAGES = ("ingest", "embed", "index", "duplicates", "neighbors")


def _clusters(ctx: RunContext) -> dict[str, set[str]]:
    rows = pd.read_parquet(ctx.layout.duplicate_clusters)
    return {cid: set(g["sku_id"]) for cid, g in rows.groupby("cluster_id")}


def _canonical(ctx: RunContext) -> dict[str, str]:
    """cluster_id -> canonical_sku_id, checking that each cluster says it of one member."""
    rows = pd.read_parquet(ctx.layout.duplicate_clusters)
    for cid, g in rows.groupby("cluster_id"):
        assert g["canonical_sku_id"].nunique() == 1, cid
        assert g.loc[g["is_canonical"], "sku_id"].tolist() == [g["canonical_sku_id"].iloc[0]]
    return rows.groupby("cluster_id")["canonical_sku_id"].first().to_dict()


def _together(clusters: dict[str, set[str]], a: str, b: str) -> bool:
    return any({a, b} <= members for members in clusters.values())


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory, pretrained_weights):
    demo = generate_demo_catalog(tmp_path_factory.mktemp("catalog") / "demo", n_products=48)
    output = tmp_path_factory.mktemp("output")
    config = Config().with_overrides(
        catalog={"path": str(demo.catalog_path)}, output={"root": str(output)}, neighbors={"k": 3}
    )
    ctx = RunContext(config, RUN_DATE)
    for stage in STAGES:
        run_stage(stage, spark, ctx)
    before = _clusters(ctx)
    # The merchandiser looks at the first cluster and says: not the same product.
    members = sorted(next(iter(sorted(before.items())))[1])
    a, b = members[0], members[1]
    reviews = ctx.layout.table("duplicate_reviews")
    record_review(reviews, b, a, "not_duplicate", reviewer="ann")
    # In the smallest other cluster (two listings: both stay close to either one), a first
    # choice confirms the rule's canonical listing; a later one prefers the other listing.
    rule = _canonical(ctx)
    cid = min((c for c in sorted(before) if c != min(before)), key=lambda c: len(before[c]))
    default = rule[cid]
    chosen = min(before[cid] - {default})
    noon = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    record_canonical(reviews, default, reviewer="bo", decided_at=noon)
    version = record_canonical(reviews, chosen, reviewer="bo", decided_at=noon + dt.timedelta(1))
    assert version == DeltaTable(str(reviews)).version()
    for stage in STAGES:
        run_stage(stage, spark, ctx)
    return ctx, before, (a, b), version, (cid, default, chosen)


def test_a_not_duplicate_review_suppresses_the_pair_in_the_next_run(runs):
    ctx, before, (a, b), _, _ = runs
    assert _together(before, a, b)
    after = _clusters(ctx)
    assert not _together(after, a, b)
    pairs = pd.read_parquet(ctx.layout.duplicate_pairs)
    assert not ((pairs["sku_id_a"] == a) & (pairs["sku_id_b"] == b)).any()
    # Every other cluster is untouched.
    assert {frozenset(m) for m in after.values()} == {
        frozenset(m) for m in before.values() if not {a, b} <= m
    }


def test_similar_items_may_show_the_pair_again_once_it_is_not_a_duplicate(runs):
    ctx, _, (a, b), _, _ = runs
    similar = pd.read_parquet(ctx.layout.similar_items)
    clusters = pd.read_parquet(ctx.layout.duplicate_clusters).set_index("sku_id")["cluster_id"]
    # No SKU is recommended a member of its own cluster.
    same = similar["sku_id"].map(clusters) == similar["similar_sku_id"].map(clusters)
    assert not (same & similar["sku_id"].isin(clusters.index)).any()


def test_reviews_survive_a_rerun_of_the_same_date(runs):
    ctx, _, (a, b), version, (_, default, chosen) = runs
    table = DeltaTable(str(ctx.layout.table("duplicate_reviews")))
    assert table.version() == version  # the job never writes the merchandisers' table
    rows = table.to_pandas().sort_values(["decision", "sku_id_a"])
    assert rows[["sku_id_a", "sku_id_b", "decision", "reviewer"]].values.tolist() == sorted(
        [[default, default, "canonical", "bo"], [chosen, chosen, "canonical", "bo"]]
    ) + [[a, b, "not_duplicate", "ann"]]


def test_the_latest_canonical_choice_becomes_the_clusters_canonical_listing(runs):
    ctx, before, _, _, (cid, default, chosen) = runs
    assert _canonical(ctx)[cid] == chosen != default
    # The chain guard measured closeness to the chosen listing and kept both listings.
    assert _clusters(ctx)[cid] == before[cid]
    # Canonical rows (sku_id_a == sku_id_b) are no pairs and no pair decisions.
    pairs = pd.read_parquet(ctx.layout.duplicate_pairs)
    assert not (pairs["sku_id_a"] == pairs["sku_id_b"]).any()
    counts = json.loads(ctx.layout.stats("duplicates").read_text())["counts"]
    assert (counts["reviews_applied"], counts["canonical_choices"]) == (1, 2)


def test_record_review_refuses_canonical_on_two_listings_and_pairs_of_one(tmp_path):
    table = tmp_path / "duplicate_reviews"
    with pytest.raises(ValueError, match="one sku_id twice.*'SKU-1', 'SKU-2'"):
        record_review(table, "SKU-1", "SKU-2", "canonical")
    for decision in ("not_duplicate", "confirmed"):
        with pytest.raises(ValueError, match="two different sku_ids"):
            record_review(table, "SKU-1", " SKU-1 ", decision)
    with pytest.raises(ValueError, match="got 'duplicate'"):
        record_review(table, "SKU-1", "SKU-2", "duplicate")
    assert not DeltaTable.is_deltatable(str(table))  # nothing refused was written
    assert record_canonical(table, " SKU-3 ", reviewer="cy") == 0
    rows = DeltaTable(str(table)).to_pandas()
    assert rows[["sku_id_a", "sku_id_b", "decision", "reviewer"]].values.tolist() == [
        ["SKU-3", "SKU-3", "canonical", "cy"]
    ]


def test_review_command_records_a_decision_and_refuses_a_bad_one(tmp_path, capsys):
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"output:\n  root: {tmp_path / 'out'}\n")
    assert (
        main(["review", "SKU-2", "SKU-1", "confirmed", "--reviewer", "bo", "--conf", str(conf)])
        == 0
    )
    rows = DeltaTable(str(tmp_path / "out" / "tables" / "duplicate_reviews")).to_pandas()
    assert rows[["sku_id_a", "sku_id_b", "decision", "reviewer"]].values.tolist() == [
        ["SKU-1", "SKU-2", "confirmed", "bo"]
    ]
    assert main(["review", "SKU-1", "SKU-1", "confirmed", "--conf", str(conf)]) == 2
    assert "two different sku_ids" in capsys.readouterr().err
