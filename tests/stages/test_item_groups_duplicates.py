"""Variants of one product (the catalog's item_group_id) are no duplicate listings: their pairs
are dropped, a cluster holds at most one of them, and a cross-group copy still clusters.

Unit checks on small vectors, then the real stages (ingest, embed, index, duplicates) on drawn
photos: variants sharing one photo form no cluster and are no placeholder either."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage
from lookalike.stages.duplicates import duplicate_clusters, without_variant_pairs

pytestmark = pytest.mark.slow

PAIRS = "sku_id_a string, sku_id_b string, score float, evidence string"
EMBEDDINGS = (
    "sku_id string, content_hash string, embedding array<float>, phash long, phash_mirrored long"
)
CATALOG = (
    "sku_id string, category string, is_active boolean, updated_at timestamp, title string, "
    "item_group_id string"
)
DIM = 8


def _unit(*components: float) -> list[float]:
    v = np.zeros(DIM)
    v[: len(components)] = components
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _catalog(spark, groups: dict[str, str | None], days: dict[str, int] | None = None):
    days = days or {}
    return spark.createDataFrame(
        [
            (s, "dresses", True, dt.datetime(2024, 1, 1 + days.get(s, 0)), f"title {s}", g)
            for s, g in groups.items()
        ],
        CATALOG,
    )


def _clusters(df) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for row in df.collect():
        groups.setdefault(row.cluster_id, set()).add(row.sku_id)
    return {frozenset(g) for g in groups.values()}


def test_pairs_of_one_item_group_are_dropped_and_null_groups_match_nothing(spark):
    pairs_df = spark.createDataFrame(
        [
            ("a", "b", 0.99, "embedding"),  # variants of G: dropped
            ("a", "c", 0.98, "embedding"),  # G and no group: kept
            ("d", "e", 1.0, "content_hash"),  # G and H: kept
            ("f", "g", 0.97, "embedding"),  # both null: kept
        ],
        PAIRS,
    )
    groups_df = spark.createDataFrame(
        [("a", "G"), ("b", "G"), ("d", "G"), ("e", "H"), ("f", None), ("g", None)],
        "sku_id string, item_group_id string",
    )
    kept = {(r.sku_id_a, r.sku_id_b) for r in without_variant_pairs(pairs_df, groups_df).collect()}
    assert kept == {("a", "c"), ("d", "e"), ("f", "g")}
    assert without_variant_pairs(pairs_df, None) is pairs_df


def test_a_copy_of_two_variants_clusters_with_one_of_them_only(spark):
    # a and b: two colours of one dress, near-same photo; c: a seller's copy of a's photo,
    # close to b too. x (group X) and y (group Y): a true copy across products.
    a, b, c = _unit(1, 0.02), _unit(1, 0.05), _unit(1, 0.03)
    x, y = _unit(0, 1), _unit(0, 1, 0.05)
    embeddings_df = spark.createDataFrame(
        [
            ("a", "ha", a, 1, 1),
            ("b", "hb", b, 2, 2),
            ("c", "hc", c, 3, 3),
            ("x", "hx", x, 4, 4),
            ("y", "hy", y, 5, 5),
        ],
        EMBEDDINGS,
    )
    groups = {"a": "DRESS", "b": "DRESS", "c": None, "x": "X", "y": "Y"}
    # b is the oldest: the rule would make b the canonical listing of {a, b, c}.
    catalog_df = _catalog(spark, groups, days={"b": 0, "a": 1, "c": 2, "x": 0, "y": 1})
    pairs_df = spark.createDataFrame(
        [
            ("a", "b", 0.99, "embedding"),
            ("a", "c", 0.99, "embedding"),
            ("b", "c", 0.98, "embedding"),
            ("x", "y", 0.99, "embedding"),
        ],
        PAIRS,
    )
    pairs_df = without_variant_pairs(pairs_df, catalog_df.select("sku_id", "item_group_id"))
    counts: dict[str, int] = {}
    clusters_df = duplicate_clusters(
        pairs_df,
        catalog_df,
        embeddings_df,
        run_id="r",
        chain_min_similarity=0.9,
        counts=counts,
    )
    # b (canonical) keeps c; a, a variant of b, is detached and alone: no cluster.
    assert _clusters(clusters_df) == {frozenset("bc"), frozenset("xy")}
    assert counts == {"variant_members_detached": 1}
    # Without the catalog's column the same pairs give one cluster of three, as before.
    clusters_df = duplicate_clusters(
        pairs_df,
        catalog_df.drop("item_group_id"),
        embeddings_df,
        run_id="r",
        chain_min_similarity=0.9,
    )
    assert _clusters(clusters_df) == {frozenset("abc"), frozenset("xy")}


# --- the real stages on drawn photos ----------------------------------------------------------


def _product(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (320, 320), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, 240, 2)
        w, h = rng.integers(30, 160, 2)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        if rng.integers(2):
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image


VARIANTS = [f"V{i}" for i in range(5)]  # one dress in five sizes, one photo


@pytest.fixture(scope="module")
def night(spark, tmp_path_factory, pretrained_weights):
    folder = tmp_path_factory.mktemp("variants_shop")
    _product(11).save(folder / "dress.jpg", quality=92)
    shutil.copy(folder / "dress.jpg", folder / "dress-copy.jpg")
    copied = _product(12)
    copied.save(folder / "shirt.jpg", quality=95)
    copied.save(folder / "shirt-q70.jpg", quality=70)
    rows = [
        (s, "dresses", "dress.jpg", f"Linen dress size {z}", "DRESS")
        for s, z in zip(VARIANTS, ["S", "M", "L", "XL", "XXL"], strict=True)
    ]
    # A seller's copy of the shirt listed as its own product: a true duplicate pair.
    rows += [("S1", "dresses", "shirt.jpg", "Oxford shirt", "SHIRT-1")]
    rows += [("S2", "dresses", "shirt-q70.jpg", "Oxford shirt", "SHIRT-2")]
    for i in range(6):
        _product(300 + i).save(folder / f"o{i}.jpg", quality=90)
        rows.append((f"O{i}", "dresses", f"o{i}.jpg", f"Item {i}", ""))
    with open(folder / "catalog.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active", "item_group_id"])
        writer.writerows((s, c, u, t, "true", g) for s, c, u, t, g in rows)
    config = Config().with_overrides(
        catalog={"path": str(folder / "catalog.csv")},
        output={"root": str(tmp_path_factory.mktemp("out"))},
        neighbors={"k": 3},
        gates={"enabled": False},
    )
    ctx = RunContext(config, dt.date(2026, 11, 23))
    for stage in ("ingest", "embed", "index", "duplicates"):
        run_stage(stage, spark, ctx)
    return ctx


def test_variants_sharing_a_photo_form_no_cluster_and_a_cross_group_copy_does(night):
    ctx = night
    clusters = pq.read_table(str(ctx.layout.duplicate_clusters)).to_pylist()
    members: dict[str, set[str]] = {}
    for row in clusters:
        members.setdefault(row["cluster_id"], set()).add(row["sku_id"])
    assert sorted(map(sorted, members.values())) == [["S1", "S2"]]
    pairs = pq.read_table(str(ctx.layout.duplicate_pairs)).to_pylist()
    assert {(p["sku_id_a"], p["sku_id_b"]) for p in pairs} == {("S1", "S2")}
    # Five sizes of one dress under one photo are one product's own photo, no placeholder.
    shared = pq.read_table(str(ctx.layout.shared_photos)).to_pylist()
    assert shared == []
    counts = json.loads(ctx.layout.stats("duplicates").read_text())["counts"]
    # The same bytes pair every variant with V0 (4), the embeddings find the rest (10 in all).
    assert 4 <= counts["variant_pairs_dropped"] <= 10
    assert counts["variant_members_detached"] == 0
    assert counts["clusters"] == 1
    catalog = pq.read_table(str(ctx.layout.catalog)).to_pylist()
    groups = {r["sku_id"]: r["item_group_id"] for r in catalog}
    assert groups["V3"] == "DRESS" and groups["O1"] is None
