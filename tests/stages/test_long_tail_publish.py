"""A catalog with a long tail of tiny categories publishes with the shipped gates on.

The whole nightly run (real Spark, MobileNet-V2, indexes, Delta tables through delta-rs) on
18 real clothing photos: one category of 12 listings and categories of 1, 2 and 3. Without a
category_path the tiny categories' listings get what their category can give and the night
publishes; with one, they fill K from their parent and each row says where it came from.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lookalike.config import Config
from lookalike.pipeline import RunContext, run_nightly

pytestmark = pytest.mark.slow

K = 10
REPO = Path(__file__).resolve().parents[2]
CLOTHING = REPO.parent / "shared" / "datasets" / "clothing-small"
# category -> (listings, the clothing folder its photos come from, its category_path)
CATEGORIES = {
    "tees": (12, "t-shirt", "Women > Tops > Tees"),
    "dresses": (1, "dress", "Women > Dresses"),
    "trousers": (2, "pants", "Women > Trousers"),
    "hats": (3, "hat", "Women > Accessories > Hats"),
}


def _write_catalog(path: Path, with_paths: bool) -> dict[str, str]:
    """The catalog CSV; returns each SKU's category."""
    category_of = {}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["sku_id", "category", "image_uri", "title", "is_active"]
            + (["category_path"] if with_paths else [])
        )
        for category, (n, folder, category_path) in CATEGORIES.items():
            photos = sorted((CLOTHING / "train" / folder).glob("*.jpg"))[:n]
            for i, photo in enumerate(photos):
                sku_id = f"{category}-{i:02d}"
                category_of[sku_id] = category
                row = [sku_id, category, str(photo), f"{category} {i}", "true"]
                writer.writerow(row + ([category_path] if with_paths else []))
    return category_of


def _night(spark, tmp_path: Path, with_paths: bool, caplog):
    if not CLOTHING.is_dir():
        pytest.skip(f"{CLOTHING} is missing: this test needs the shared clothing photos")
    catalog = tmp_path / "catalog.csv"
    category_of = _write_catalog(catalog, with_paths)
    config = Config().with_overrides(
        catalog={"path": str(catalog), "image_roots": [str(CLOTHING)]},
        output={"root": str(tmp_path / "out")},
        neighbors={"k": K},
    )
    with caplog.at_level(logging.INFO, logger="lookalike"):
        results = run_nightly(spark, RunContext(config, dt.date(2026, 12, 2)))
    published = {r.stage: r.counts for r in results}["publish"]
    similar = DeltaTable(str(tmp_path / "out" / "tables" / "similar_items")).to_pandas()
    return category_of, published, similar


def test_tiny_categories_publish_with_what_their_category_can_give(
    spark, tmp_path, pretrained_weights, caplog
):
    category_of, published, similar = _night(spark, tmp_path, False, caplog)
    assert published["similar_items"] == len(similar) == 12 * K + 2 * 1 + 3 * 2
    assert "published similar_items: version 0" in caplog.text
    # The gate's figure, as the run prints it: every listing counts as complete.
    assert "gate full_topk_share: 18 of 18 active listings" in caplog.text
    assert "6 of them can get fewer than K" in caplog.text
    per_sku = similar.groupby("sku_id").size().to_dict()
    for sku_id, category in category_of.items():
        size = CATEGORIES[category][0]
        assert per_sku.get(sku_id, 0) == min(K, size - 1), sku_id
    assert (similar["source"] == "category").all()
    same = similar["similar_sku_id"].map(category_of) == similar["sku_id"].map(category_of)
    assert same.all()


def test_with_a_category_path_tiny_categories_fill_k_from_their_parent(
    spark, tmp_path, pretrained_weights, caplog
):
    category_of, published, similar = _night(spark, tmp_path, True, caplog)
    assert published["similar_items"] == len(similar) == 18 * K
    assert "published similar_items: version 0" in caplog.text
    assert "gate full_topk_share: 18 of 18 active listings" in caplog.text
    per_sku = similar.groupby("sku_id").size().to_dict()
    assert per_sku == {sku_id: K for sku_id in category_of}
    for sku_id, rows in similar.sort_values("rank").groupby("sku_id"):
        category = category_of[sku_id]
        own = CATEGORIES[category][0] - 1
        # Its own category first, then the nearest ancestor that holds K: "Women".
        expected = ["category"] * min(K, own) + ["Women"] * (K - min(K, own))
        assert rows["source"].tolist() == expected, sku_id
        borrowed = rows[rows["source"] == "Women"]["similar_sku_id"].map(category_of)
        assert (borrowed != category).all(), sku_id
