"""The styles stage: same-style groups from the neighbours the neighbors stage asked for.

Real index, neighbors and styles stages on Spark local[2] over run folders written here
(synthetic unit vectors, as tests/stages/test_neighbors.py writes them).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.pipeline import run_stage
from tests.stages.test_neighbors import DIM, _unit, _write, make_run


def groups_of(ctx) -> dict[str, set[str]]:
    rows = pq.read_table(str(ctx.layout.style_groups)).to_pandas()
    return {g: set(members["sku_id"]) for g, members in rows.groupby("group_id")}


def unrelated(rng, category: str, n: int, prefix: str = "U"):
    """n listings of a category, far from one another (random directions)."""
    return [(f"{prefix}{i:02d}", category, True, _unit(rng.normal(size=DIM))) for i in range(n)]


def colours(rng, category: str, name: str, n: int, spread: float = 0.05):
    """One product photographed in n colours: n vectors close to one design's."""
    design = _unit(rng.normal(size=DIM))
    return [
        (f"{name}-c{i}", category, True, _unit(design + spread * rng.normal(size=DIM)))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def styled(spark, tmp_path_factory):
    """One run of every case, each in its own category, and the styles stage's counts."""
    rng = np.random.default_rng(0)
    shirt, top = _unit(rng.normal(size=DIM)), _unit(rng.normal(size=DIM))
    listings = (
        unrelated(rng, "dresses", 8, "D")
        + colours(rng, "dresses", "DRESS", 2)
        # A category of one listing.
        + [("LONE", "hats", True, _unit(rng.normal(size=DIM)))]
        # Three designs in four colours each, among others.
        + unrelated(rng, "coats", 6, "C")
        + colours(rng, "coats", "COATA", 4, spread=0.1)
        + colours(rng, "coats", "COATB", 4, spread=0.1)
        + colours(rng, "coats", "COATC", 4, spread=0.1)
        # A duplicate pair alone; a duplicate pair and another colour of it.
        + unrelated(rng, "shirts", 8, "S")
        + [("SHIRT-1", "shirts", True, shirt), ("SHIRT-2", "shirts", True, shirt)]
        + unrelated(rng, "tops", 8, "T")
        + [("TOP-1", "tops", True, top), ("TOP-2", "tops", True, top)]
        + [("TOP-blue", "tops", True, _unit(top + 0.05 * rng.normal(size=DIM)))]
        # Unrelated photos, two of them variants of one product by the catalog's word.
        + unrelated(rng, "bags", 10, "B")
    )
    clusters = [
        ("dup-shirt", "SHIRT-1", "SHIRT-1"),
        ("dup-shirt", "SHIRT-2", "SHIRT-1"),
        ("dup-top", "TOP-1", "TOP-2"),  # the canonical listing is TOP-2
        ("dup-top", "TOP-2", "TOP-2"),
    ]
    ctx = make_run(spark, tmp_path_factory.mktemp("styles"), listings, clusters=clusters)
    _write(
        ctx,
        "catalog",
        pa.table(
            {
                "sku_id": [s for s, *_ in listings],
                "category": [c for _, c, *_ in listings],
                "is_active": [True] * len(listings),
                "item_group_id": pa.array(
                    ["TOTE" if s in ("B02", "B07") else None for s, *_ in listings], pa.string()
                ),
            }
        ),
    )
    counts = run_stage("styles", spark, ctx).counts
    rows = pq.read_table(str(ctx.layout.style_groups)).to_pandas()
    return ctx, counts, rows, {s: v for s, _, _, v in listings}


def in_category(rows, category: str) -> list[set[str]]:
    rows = rows[rows["category"] == category]
    return sorted((set(m["sku_id"]) for _, m in rows.groupby("group_id")), key=sorted)


def test_two_colours_of_one_product_share_a_group_and_unrelated_listings_none(styled):
    _, _, rows, vectors = styled
    assert in_category(rows, "dresses") == [{"DRESS-c0", "DRESS-c1"}]
    pair = rows[rows["category"] == "dresses"]
    assert pair["group_size"].tolist() == [2, 2]
    assert pair["is_representative"].sum() == 1
    assert pair["representative_sku_id"].nunique() == 1
    # The cohesion of a pair is its cosine.
    assert pair["cohesion"].iloc[0] == pytest.approx(
        float(vectors["DRESS-c0"] @ vectors["DRESS-c1"]), abs=1e-5
    )
    assert in_category(rows, "coats") == [
        {f"COAT{n}-c{i}" for i in range(4)} for n in ("A", "B", "C")
    ]


def test_a_duplicate_pair_alone_makes_no_group_but_joins_one_as_one_member(styled):
    _, _, rows, _ = styled
    assert in_category(rows, "shirts") == []
    # The pair stands as its canonical listing beside the other colour.
    assert in_category(rows, "tops") == [{"TOP-2", "TOP-blue"}]


def test_a_category_of_one_listing_has_no_group(styled):
    _, counts, rows, _ = styled
    assert "hats" not in set(rows["category"])
    assert counts["categories_with_groups"] == 4  # dresses, coats, tops, bags


def test_item_groups_join_their_variants_whatever_their_photos(styled):
    _, _, rows, _ = styled
    assert in_category(rows, "bags") == [{"B02", "B07"}]


def test_the_counts_describe_the_table_and_a_rerun_writes_the_same_rows(spark, styled):
    ctx, counts, rows, _ = styled
    assert counts["groups"] == rows["group_id"].nunique() == 6  # 1 + 3 + 1 + 1
    assert counts["listings_in_groups"] == len(rows) == 2 + 12 + 2 + 2
    assert counts["largest_group"] == 4
    assert json.loads(ctx.layout.stats("styles").read_text())["counts"] == counts
    run_stage("styles", spark, ctx)
    again = pq.read_table(str(ctx.layout.style_groups)).to_pandas()
    order = ["category", "group_id", "sku_id"]
    pd.testing.assert_frame_equal(
        rows.sort_values(order).reset_index(drop=True),
        again.sort_values(order).reset_index(drop=True),
    )
