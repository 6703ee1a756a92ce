"""Shared photos: one image (a "no photo yet" placeholder, a logo) on many different listings is
set apart, never a duplicate cluster; a seller's real copies of one listing still cluster."""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chispa import assert_column_equality
from deltalake import DeltaTable
from PIL import Image, ImageDraw

from browser import file_url, needs_browser, open_page
from lookalike.config import Config
from lookalike.layout import STAGES
from lookalike.pipeline import RunContext, run_stage
from lookalike.stages.duplicates import duplicate_clusters
from lookalike.stages.report_page import write_duplicate_report
from lookalike.stages.shared_photos import (
    normalised_title,
    photo_groups,
    shared_photos,
    without_shared_photos,
)

pytestmark = pytest.mark.slow

EMBEDDINGS = (
    "sku_id string, category string, content_hash string, embedding array<float>, "
    "phash long, phash_mirrored long"
)
CATALOG = "sku_id string, category string, title string, image_uri string, is_active boolean"
PAIRS = "sku_id_a string, sku_id_b string, score float, evidence string"
DIM = 8


def _unit(*components: float) -> list[float]:
    v = np.zeros(DIM)
    v[: len(components)] = components
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


# --- the rule, on small frames -----------------------------------------------------------------


def test_normalised_title_ignores_case_punctuation_and_spacing(spark):
    df = spark.createDataFrame(
        [
            ("Blue Shirt!", "blue shirt"),
            ("  blue   SHIRT ", "blue shirt"),
            ("Blue shirt (2)", "blue shirt 2"),
            ("Crème brûlée — mug", "crème brûlée mug"),
            ("!!!", ""),
            (None, ""),
        ],
        "title string, expected string",
    ).withColumn("normalised", normalised_title("title"))
    assert_column_equality(df, "normalised", "expected")


def test_a_reencoded_copy_joins_the_most_used_file_and_a_lookalike_does_not(spark):
    base = 0x5A5A_1234_F0F0_0FF0
    v = _unit(1, 0.05)
    rows = [(f"p{i}", "mugs", "h-png", v, base, ~base) for i in range(3)]
    rows += [
        # The same picture saved as JPEG: 2 bits off, descriptor 0.999 alike.
        ("p-jpg", "hats", "h-jpg", _unit(1, 0.08), base ^ 0b101, ~base),
        # A close hash but another picture (plain backgrounds share low frequencies).
        ("other", "mugs", "h-other", _unit(1, 0.6), base ^ 0b1, ~base),
        # No pHash (an older vector): only its bytes group it.
        ("bare", "mugs", "h-bare", v, None, None),
    ]
    groups_df = photo_groups(
        spark.createDataFrame(rows, EMBEDDINGS), max_distance=6, max_bucket=100, min_similarity=0.98
    )
    got = {r.sku_id: r.group_key for r in groups_df.collect()}
    assert got == {
        "p0": "h-png",
        "p1": "h-png",
        "p2": "h-png",
        "p-jpg": "h-png",
        "other": "h-other",
        "bare": "h-bare",
    }


def _shared(spark, listings, *, min_listings=5, min_title_share=0.5):
    """listings: (sku_id, category, title, content_hash); every file its own picture."""
    hashes = sorted({h for *_, h in listings})
    vectors = {h: _unit(*([0] * i), 1) for i, h in enumerate(hashes)}
    embeddings_df = spark.createDataFrame(
        [(s, c, h, vectors[h], i, i) for i, (s, c, _, h) in enumerate(listings)], EMBEDDINGS
    )
    catalog_df = spark.createDataFrame(
        [(s, c, t, f"/img/{h}.jpg", True) for s, c, t, h in listings], CATALOG
    )
    return shared_photos(
        embeddings_df,
        catalog_df,
        run_id="r1",
        min_listings=min_listings,
        min_title_share=min_title_share,
        min_similarity=0.98,
        max_distance=0,
        max_bucket=100,
    )


def test_shared_photo_rule_tells_a_placeholder_from_a_sellers_copies(spark):
    listings = [
        # 7 products on one placeholder in one category, 4 distinct titles: 4 >= 0.5 x 7.
        *[(f"ph{i}", "mugs", f"Mug model {i % 4}", "h-ph") for i in range(7)],
        # One product listed 6 times, titles differing in case and punctuation only.
        *[(f"re{i}", "mugs", "Red mug!" if i % 2 else "red  MUG", "h-re") for i in range(6)],
        # 5 listings in two categories, no titles at all: more than one category.
        *[(f"nt{i}", "hats" if i < 2 else "caps", None, "h-nt") for i in range(5)],
        # 4 different products: too few listings to say.
        *[(f"few{i}", "mugs", f"Product {i}", "h-few") for i in range(4)],
        # 6 listings, 2 distinct titles in one category: 2 < 0.5 x 6, a seller's copies.
        *[(f"two{i}", "mugs", f"Teapot {i % 2}", "h-two") for i in range(6)],
    ]
    rows = _shared(spark, listings).collect()
    groups = {}
    for row in rows:
        groups.setdefault(row.group_id, []).append(row)
    by_sku = {r.sku_id: r for r in rows}
    assert set(by_sku) == {f"ph{i}" for i in range(7)} | {f"nt{i}" for i in range(5)}
    assert len(groups) == 2
    ph = by_sku["ph0"]
    assert (ph.n_listings, ph.n_categories, ph.n_titles) == (7, 1, 4)
    nt = by_sku["nt0"]
    # Listings without a title are no distinct title.
    assert (nt.n_listings, nt.n_categories, nt.n_titles) == (5, 2, 0)
    assert ph.group_id.startswith("photo-") and ph.group_id != nt.group_id
    assert {r.image_uri for r in groups[ph.group_id]} == {"/img/h-ph.jpg"}
    assert all(r.run_id == "r1" and r.content_hash for r in rows)


def test_shared_photo_rule_thresholds_are_the_settings(spark):
    listings = [(f"s{i}", "mugs", f"Mug {i % 3}", "h") for i in range(6)]  # 3 titles of 6
    assert _shared(spark, listings, min_title_share=0.5).count() == 6
    assert _shared(spark, listings, min_title_share=0.6).count() == 0
    assert _shared(spark, listings, min_listings=7).count() == 0


def test_without_shared_photos_cuts_every_pair_through_a_placeholder(spark):
    """p1..p3 show the placeholder; g1, g2 are a real pair. An edge from a placeholder listing
    to g1 (any evidence) would otherwise pull the placeholders into g1's cluster."""
    pairs_df = spark.createDataFrame(
        [
            ("p1", "p2", 1.0, "content_hash"),
            ("p1", "p3", 1.0, "content_hash,phash"),
            ("g1", "p2", 0.95, "embedding"),
            ("g1", "g2", 0.99, "embedding"),
        ],
        PAIRS,
    )
    shared_df = spark.createDataFrame([(s,) for s in ("p1", "p2", "p3")], "sku_id string")
    kept_df = without_shared_photos(pairs_df, shared_df)
    assert [(r.sku_id_a, r.sku_id_b) for r in kept_df.collect()] == [("g1", "g2")]
    v = _unit(1)
    embeddings_df = spark.createDataFrame(
        [(s, "mugs", f"h-{s}", v, 1, 1) for s in ("p1", "p2", "p3", "g1", "g2")], EMBEDDINGS
    )
    catalog_df = spark.createDataFrame(
        [(s, "mugs", True, dt.datetime(2024, 1, 1), s) for s in ("p1", "p2", "p3", "g1", "g2")],
        "sku_id string, category string, is_active boolean, updated_at timestamp, title string",
    )
    for pairs, expected in ((pairs_df, {"p1", "p2", "p3", "g1", "g2"}), (kept_df, {"g1", "g2"})):
        clustered = duplicate_clusters(
            pairs, catalog_df, embeddings_df, run_id="r", chain_min_similarity=0.9
        ).collect()
        assert {r.sku_id for r in clustered} == expected
    # Listings too (the neighbors stage leaves them out the same way).
    listings_df = spark.createDataFrame([("p1",), ("g1",)], "sku_id string")
    assert [r.sku_id for r in without_shared_photos(listings_df, shared_df).collect()] == ["g1"]


# --- the real stages on a small catalog with a placeholder -------------------------------------

RUN_DATE = dt.date(2026, 11, 23)
HOSTILE = '<script>alert(1)</script><img src=x onerror="console.error(1)">'


def _placeholder() -> Image.Image:
    """A shop's grey "no photo yet" image: a camera outline and the words."""
    image = Image.new("RGB", (400, 400), (228, 228, 228))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((130, 140, 270, 240), radius=14, outline=(160, 160, 160), width=8)
    draw.ellipse((170, 160, 230, 220), outline=(160, 160, 160), width=8)
    draw.text((150, 280), "NO PHOTO", fill=(140, 140, 140), font_size=28)
    return image


def _product(seed: int) -> Image.Image:
    """A made-up product photo: random shapes and colours (different seeds: descriptors
    below 0.89 alike, measured, so no two are near-duplicates)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (320, 320), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, 240, 2)
        w, h = rng.integers(30, 160, 2)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(
                [tuple(int(v) for v in rng.integers(0, 320, 2)) for _ in range(3)], fill=fill
            )
    return image


def _jpeg(image: Image.Image, path: Path, quality: int) -> str:
    image.save(path, format="JPEG", quality=quality)
    return path.name


PLACEHOLDERS = [f"P{i:02d}" for i in range(30)]
PAIRS_PLANTED = [{"G1a", "G1b"}, {"G2a", "G2b"}, {"G3a", "G3b"}]
RELISTED = {f"R{i}" for i in range(6)}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """A catalog: 30 different products without a photo yet (one placeholder file, two byte
    copies of it, two JPEG re-encodings), three real duplicate pairs, one product listed six
    times with one photo, and ordinary listings."""
    folder = tmp_path_factory.mktemp("shop")
    placeholder = _placeholder()
    placeholder.save(folder / "no-photo.png")
    shutil.copy(folder / "no-photo.png", folder / "no-photo-copy.png")
    files = ["no-photo.png"] * 26 + ["no-photo-copy.png"] * 2
    files += [_jpeg(placeholder, folder / "no-photo-q90.jpg", 90)]
    files += [_jpeg(placeholder, folder / "no-photo-q80.jpg", 80)]
    rows = []
    for i, (sku, name) in enumerate(zip(PLACEHOLDERS, files, strict=True)):
        category, thing = ("shirts", "shirt") if i % 2 else ("mugs", "mug")
        title = (
            HOSTILE
            if i == 3  # among the first titles by sku_id, which the page samples
            else f"{['Linen', 'Wool', 'Silk', 'Denim', 'Cotton'][i % 5]} {thing} no. {i}"
        )
        rows.append((sku, category, name, title))
    # Real duplicates: the same file twice; a JPEG re-encoding; and a product photographed on
    # the shop's placeholder background (close to the placeholder, but its own photo).
    _jpeg(_product(101), folder / "g1.jpg", 92)
    shutil.copy(folder / "g1.jpg", folder / "g1-copy.jpg")
    rows += [
        ("G1a", "mugs", "g1.jpg", "Red enamel mug"),
        ("G1b", "mugs", "g1-copy.jpg", "Red enamel mug"),
    ]
    g2 = _product(102)
    rows += [
        ("G2a", "shirts", _jpeg(g2, folder / "g2.jpg", 95), "Blue oxford shirt"),
        ("G2b", "shirts", _jpeg(g2, folder / "g2-q70.jpg", 70), "blue oxford shirt!"),
    ]
    g3 = placeholder.copy()
    g3.paste(_product(103).resize((220, 220)), (90, 90))
    rows += [
        ("G3a", "mugs", _jpeg(g3, folder / "g3.jpg", 92), "Stoneware mug"),
        ("G3b", "mugs", _jpeg(g3, folder / "g3-q75.jpg", 75), "Stoneware mug"),
    ]
    # One scarf listed six times by its seller: its copies, not a placeholder.
    _jpeg(_product(104), folder / "scarf.jpg", 90)
    rows += [(sku, "scarves", "scarf.jpg", "Green wool scarf") for sku in sorted(RELISTED)]
    for i in range(8):
        category = ["mugs", "shirts", "scarves"][i % 3]
        rows.append(
            (f"O{i}", category, _jpeg(_product(200 + i), folder / f"o{i}.jpg", 90), f"Item {i}")
        )
    with open(folder / "catalog.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        writer.writerows((sku, cat, name, title, "true") for sku, cat, name, title in rows)
    return folder / "catalog.csv"


@pytest.fixture(scope="module")
def night(spark, shop, tmp_path_factory, pretrained_weights):
    """The real stages, ingest to publish (gates off: 50 listings are no quality sample)."""
    config = Config().with_overrides(
        catalog={"path": str(shop)},
        output={"root": str(tmp_path_factory.mktemp("out"))},
        neighbors={"k": 3},
        gates={"enabled": False},
    )
    ctx = RunContext(config, RUN_DATE)
    results = {stage: run_stage(stage, spark, ctx) for stage in STAGES}
    return ctx, results


def _clusters(ctx, spark) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for row in spark.read.parquet(str(ctx.layout.duplicate_clusters)).collect():
        groups.setdefault(row.cluster_id, set()).add(row.sku_id)
    return {frozenset(g) for g in groups.values()}


def test_the_thirty_placeholder_listings_are_shared_photos_not_a_cluster(spark, night):
    ctx, results = night
    shared = spark.read.parquet(str(ctx.layout.shared_photos)).toPandas()
    assert sorted(shared["sku_id"]) == PLACEHOLDERS
    assert shared["group_id"].nunique() == 1
    assert set(shared["n_listings"]) == {30}
    assert set(shared["n_categories"]) == {2}
    assert set(shared["n_titles"]) == {30}
    # Both re-encodings joined the group; every row keeps its own file's hash.
    assert shared["content_hash"].nunique() == 3
    assert set(shared["category"]) == {"mugs", "shirts"}
    assert (shared["run_id"] == ctx.run_id).all()
    counts = results["duplicates"].counts
    assert counts["shared_photo_groups"] == 1
    assert counts["listings_without_own_photo"] == 30


def test_real_duplicates_still_cluster_and_nothing_joins_them_through_the_placeholder(spark, night):
    ctx, _ = night
    clusters = _clusters(ctx, spark)
    in_clusters = set().union(*clusters)
    assert not in_clusters & set(PLACEHOLDERS)
    # Exactly the planted groups: each real pair (G3 is photographed on the placeholder's
    # background) and the six copies of the scarf, none merged with another.
    assert clusters == {frozenset(p) for p in PAIRS_PLANTED} | {frozenset(RELISTED)}
    pairs = spark.read.parquet(str(ctx.layout.duplicate_pairs)).collect()
    assert not {p for r in pairs for p in (r.sku_id_a, r.sku_id_b)} & set(PLACEHOLDERS)


def test_the_report_lists_the_placeholder_once_with_its_count_and_a_csv(night):
    ctx, results = night
    assert results["report"].counts["shared_photo_groups_shown"] == 1
    html = (ctx.layout.report_dir / "duplicates.html").read_text()
    section = html[html.index('id="shared-photos"') : html.index('id="category-mismatches"')]
    assert section.count('<article class="shared">') == 1
    assert '<dd class="count">30</dd>' in section
    assert "mugs (15), shirts (15)" in section
    assert "data:image/jpeg;base64," in section  # the placeholder's thumbnail
    # The hostile title is in the sample, escaped; no placeholder listing is a cluster card.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "<script>" not in html
    cards = html[: html.index('id="shared-photos"')]
    assert not any(f">{sku}<" in cards for sku in PLACEHOLDERS)
    with open(ctx.layout.report_dir / "shared_photos.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["sku_id"] for r in rows) == PLACEHOLDERS
    assert {r["n_listings"] for r in rows} == {"30"}
    assert HOSTILE in {r["title"] for r in rows}


def test_publish_replaces_the_shared_photos_table(night):
    ctx, results = night
    table = DeltaTable(str(ctx.layout.table("shared_photos")))
    published = table.to_pyarrow_table().to_pandas()
    assert sorted(published["sku_id"]) == PLACEHOLDERS
    assert set(published.columns) >= {"sku_id", "category", "content_hash", "n_listings", "run_id"}
    assert results["publish"].counts["shared_photos"] == 30


@needs_browser
def test_the_section_in_a_browser_shows_the_group_and_a_hostile_title_as_text(tmp_path):
    image = tmp_path / "no-photo.png"
    _placeholder().save(image)
    rows = [
        {
            "group_id": "photo-abc",
            "sku_id": f"S{i}",
            "category": "mugs" if i < 3 else "shirts",
            "title": HOSTILE if i == 1 else (None if i == 2 else f"Product {i}"),
            "image_uri": str(image),
            "content_hash": "h",
            "n_listings": 12,  # more than the CSV holds: the page says so
            "n_categories": 2,
            "n_titles": 4,
            "run_id": "2026-11-23",
        }
        for i in range(5)
    ]
    paths = write_duplicate_report(
        pd.DataFrame(), tmp_path / "report", run_id="2026-11-23", shared_photos=pd.DataFrame(rows)
    )
    page = open_page(
        file_url(paths.html),
        selectors=(
            ".shared .count",
            ".shared .categories",
            ".shared .title",
            ".shared img",
            "script",
        ),
    )
    assert page.errors == []
    assert page.texts[".shared .count"] == ["12"]
    assert page.texts[".shared .categories"] == ["mugs (3), shirts (2)"]
    assert HOSTILE in page.texts[".shared .title"]
    assert "no title" in page.texts[".shared .title"]
    assert len(page.texts[".shared img"]) == 1
    assert page.texts["script"] == []
    assert "the first 5 by SKU" in paths.html.read_text()
