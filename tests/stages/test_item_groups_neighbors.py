"""Variants of one product (the catalog's item_group_id) in similar_items: never each other's
similar items, another product's variants shown once, and a catalog without the column gives
the rows it gave before.

Real index and neighbors stages on Spark local[2] over run folders written here (synthetic
unit vectors, exact shards); every row is checked against a brute-force answer with numpy.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage
from lookalike.stages.publish import check_gates

pytestmark = pytest.mark.slow

K = 5
DIM = 16
NO_COLUMN = object()  # a catalog without the item_group_id column


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _write(ctx: RunContext, name: str, table: pa.Table) -> None:
    folder = ctx.layout.work / name
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")


def make_run(spark, tmp_path, listings, groups, *, clusters=()) -> RunContext:
    """listings: (sku_id, category, vector); groups: {sku_id: item_group_id}, or NO_COLUMN;
    clusters: (cluster_id, sku_id, canonical_sku_id). Then the real index and neighbors."""
    config = Config().with_overrides(output={"root": str(tmp_path)}, neighbors={"k": K})
    ctx = RunContext(config, dt.date(2026, 11, 23))
    sku_ids = [s for s, _, _ in listings]
    categories = [c for _, c, _ in listings]
    _write(
        ctx,
        "embeddings",
        pa.table(
            {
                "sku_id": sku_ids,
                "category": categories,
                "is_active": [True] * len(listings),
                "model_id": ["m1"] * len(listings),
                "embedding": pa.array(
                    [v.astype(np.float32) for *_, v in listings], pa.list_(pa.float32())
                ),
            }
        ),
    )
    _write(
        ctx,
        "duplicate_clusters",
        pa.table(
            {
                "cluster_id": pa.array([c for c, _, _ in clusters], pa.string()),
                "sku_id": pa.array([s for _, s, _ in clusters], pa.string()),
                "canonical_sku_id": pa.array([k for _, _, k in clusters], pa.string()),
                "is_canonical": pa.array([s == k for _, s, k in clusters], pa.bool_()),
            }
        ),
    )
    catalog = {"sku_id": sku_ids, "category": categories, "is_active": [True] * len(listings)}
    if groups is not NO_COLUMN:
        catalog["item_group_id"] = pa.array([groups.get(s) for s in sku_ids], pa.string())
    _write(ctx, "catalog", pa.table(catalog))
    run_stage("index", spark, ctx)
    run_stage("neighbors", spark, ctx)
    return ctx


def similar_rows(ctx: RunContext):
    rows = pq.read_table(str(ctx.layout.similar_items)).to_pandas()
    return rows.sort_values(["sku_id", "rank"]).reset_index(drop=True)


def run_counts(ctx):
    return json.loads(ctx.layout.stats("neighbors").read_text())["counts"]


def cosine(a: np.ndarray, b: np.ndarray) -> np.float32:
    a, b = _unit(a.astype(np.float32)), _unit(b.astype(np.float32))
    return np.float32(np.clip(a.astype(np.float64) @ b.astype(np.float64), -1, 1))


def expected_row(sku_id, listings, groups, clusters=()):
    """The brute-force row: same category, not self, not an own variant nor an own duplicate,
    one listing per other cluster (its canonical where a candidate) then per other group (the
    best), the best K."""
    vectors = {s: v for s, _, v in listings}
    category = {s: c for s, c, _ in listings}
    cluster_of = {s: c for c, s, _ in clusters}
    canonical = {c: k for c, _, k in clusters}
    group = {} if groups is NO_COLUMN else {s: g for s, g in groups.items() if g is not None}
    candidates = sorted(
        (
            s
            for s in vectors
            if s != sku_id
            and category[s] == category[sku_id]
            and (sku_id not in cluster_of or cluster_of.get(s) != cluster_of[sku_id])
        ),
        key=lambda s: (-cosine(vectors[sku_id], vectors[s]), s),
    )
    per_cluster, seen = [], set()
    for s in candidates:
        product = cluster_of.get(s, s)
        if product in seen:
            continue
        seen.add(product)
        members = [m for m in candidates if cluster_of.get(m, m) == product]
        per_cluster.append(canonical.get(product) if canonical.get(product) in members else s)
    per_cluster.sort(key=lambda s: (-cosine(vectors[sku_id], vectors[s]), s))
    kept, seen_groups = [], set()
    for s in per_cluster:
        g = group.get(s)
        if g is not None and g == group.get(sku_id):
            continue
        if g is not None and g in seen_groups:
            continue
        if g is not None:
            seen_groups.add(g)
        kept.append(s)
    return kept[:K]


def planted_listings():
    """A category of 30 listings; next to big-000 its own four variants (group DRESS), the
    three variants of another product (group SHIRT) and a duplicate cluster (c0, c1)."""
    rng = np.random.default_rng(7)
    centre = _unit(rng.normal(size=DIM))
    vectors = _unit(centre + 0.5 * rng.normal(size=(30, DIM)))
    listings = [(f"big-{i:03d}", "big", v) for i, v in enumerate(vectors)]
    point = vectors[0]
    near = [_unit(point + 0.03 * rng.normal(size=DIM)) for _ in range(4)]
    listings += [(f"dress-{i}", "big", v) for i, v in enumerate(near)]
    near = [_unit(point + 0.08 * rng.normal(size=DIM)) for _ in range(3)]
    listings += [(f"shirt-{i}", "big", v) for i, v in enumerate(near)]
    near = [_unit(point + 0.1 * rng.normal(size=DIM)) for _ in range(2)]
    listings += [(f"c{i}", "big", v) for i, v in enumerate(near)]
    listings += [(f"small-{i}", "small", _unit(rng.normal(size=DIM))) for i in range(4)]
    groups = {"big-000": "DRESS"} | {f"dress-{i}": "DRESS" for i in range(4)}
    groups |= {f"shirt-{i}": "SHIRT" for i in range(3)}
    # A group of one, a group with a blank-like id elsewhere: nulls never match.
    groups |= {"big-001": "ALONE", "small-0": None, "small-1": None}
    # Variants of a group in a small category: small-2 and small-3 are one product.
    groups |= {"small-2": "MUG", "small-3": "MUG"}
    clusters = [("C", "c0", "c0"), ("C", "c1", "c0")]
    return listings, groups, clusters


@pytest.fixture(scope="module")
def planted(spark, tmp_path_factory):
    listings, groups, clusters = planted_listings()
    ctx = make_run(spark, tmp_path_factory.mktemp("groups"), listings, groups, clusters=clusters)
    return ctx, listings, groups, clusters


def test_variants_are_not_each_others_similar_items_and_rows_stay_full(planted):
    ctx, listings, groups, clusters = planted
    rows = similar_rows(ctx)
    for sku_id, got in rows.groupby("sku_id"):
        assert got["similar_sku_id"].tolist() == expected_row(sku_id, listings, groups, clusters), (
            sku_id
        )
        assert got["rank"].tolist() == list(range(1, len(got) + 1))
        own = groups.get(sku_id)
        if own is not None:
            assert not any(groups.get(s) == own for s in got["similar_sku_id"]), sku_id
    per_sku = rows.groupby("sku_id").size()
    # Every listing of the big category gets K from other products, its variants' places
    # given to the next products.
    assert (per_sku[[s for s, c, _ in listings if c == "big"]] == K).all()
    row = rows.loc[rows["sku_id"] == "big-000", "similar_sku_id"].tolist()
    assert not any(s.startswith("dress-") for s in row)
    # The other product's variants are all nearer than anything else but one is shown.
    assert sum(s.startswith("shirt-") for s in row) == 1
    # small: small-2 and small-3 are variants; the others (null groups) see one of them.
    assert "small-3" not in rows.loc[rows["sku_id"] == "small-2", "similar_sku_id"].tolist()
    for s in ("small-0", "small-1"):
        got = rows.loc[rows["sku_id"] == s, "similar_sku_id"].tolist()
        assert len(got) == 2 and sum(x in ("small-2", "small-3") for x in got) == 1, s


def test_the_variants_dropped_are_counted_and_the_gate_counts_a_group_once(spark, planted):
    ctx, *_ = planted
    counts = run_counts(ctx)
    assert counts["variant_candidates_dropped"] > 0
    assert counts["repeated_variant_candidates_dropped"] > 0
    assert counts["skus_with_full_k"] == counts["skus"] - 4  # the small category's four
    # small-2 can get 2 (small-0, small-1), small-0 can get 2 (small-1 and one MUG): full.
    gates = {r.gate: r for r in check_gates(spark, ctx)}
    assert gates["full_topk_share"].value == 1.0


@pytest.mark.parametrize("groups", ["no column", "all null"])
def test_a_catalog_without_item_groups_gives_the_rows_it_gave_before(
    spark, tmp_path, planted, groups
):
    ctx, listings, _, clusters = planted
    none = NO_COLUMN if groups == "no column" else {}
    before = make_run(spark, tmp_path, listings, none, clusters=clusters)
    rows = similar_rows(before)
    for sku_id, got in rows.groupby("sku_id"):
        expected = expected_row(sku_id, listings, NO_COLUMN, clusters)
        assert got["similar_sku_id"].tolist() == expected, sku_id
    # Without groups, big-000's own variants are its nearest: the rule is what moves them.
    assert rows.loc[rows["sku_id"] == "big-000", "similar_sku_id"].str.startswith("dress-").any()
    counts = run_counts(before)
    assert counts["variant_candidates_dropped"] == 0
    assert counts["repeated_variant_candidates_dropped"] == 0
