"""Shared photos vs real duplicate groups: where the rule separates placeholders from copies.

Builds a catalog in a temporary folder, deterministically for a seed:

- ordinary listings: real photos of ../shared/datasets/clothing-small (test split), one each;
- real duplicate groups: one real photo listed k = 2..8 times (3 groups per k), each copy the
  same file, a byte copy, or a JPEG re-encoding (quality 70-92); the titles are the original's
  with what relisting does to them: case, punctuation and spacing changed (about half the
  copies), and a word added ("NEW", "(2)", "sale", "- copy") for about a quarter; one group in
  five has a copy cross-listed in another category;
- placeholder groups: n = 3..40 listings of different products on one drawn placeholder (grey
  "no photo", a white blank, a shop logo, "coming soon"), one or two categories; a fifth of
  the listings show a JPEG re-encoding of it; the titles are distinct product titles, with a
  fifth generic ("T-shirt", the category's name) as in shops that title badly.

The titles are generated (the dataset has none): the measurement says where the rule falls for
titles made this way, not for any shop's. It runs the real stages (ingest, embed, index,
duplicates; MobileNet-V2, local[2]), then reads the stage's own groups (``photo_groups`` and
``photo_group_features`` on the run's embeddings) and prints, per planted group, what the
stage saw (listings grouped, distinct titles, categories) and its verdict; then, for a sweep
of ``shared_photo_min_listings`` x ``shared_photo_min_title_share``, the listings of real
duplicate groups wrongly set apart and the placeholder listings left in clusters. And the
re-encoding threshold: the descriptor similarity of each re-encoded file to its original
against that of distinct real photos whose pHashes are within ``phash_max_distance`` bits.

Usage:  .venv/bin/python benchmarks/shared_photos.py [--seed 5] [--ordinary 150] [--smoke]
About 2-4 minutes on 2 cores (the embedding of ~600 photos is most of it).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "clothing-small" / "test"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))

COLOURS = ["red", "blue", "black", "white", "green", "grey", "navy", "beige", "pink", "olive"]
MATERIALS = ["cotton", "linen", "wool", "denim", "silk", "fleece", "leather", "jersey"]
STYLES = ["slim", "classic", "oversized", "vintage", "summer", "everyday", "casual", "formal"]
ADDED_WORDS = ["NEW", "(2)", "sale", "- copy"]


@dataclass(frozen=True)
class Listing:
    sku_id: str
    category: str
    image: str  # file name in the catalog folder
    title: str
    group: str  # planted group id ("" for an ordinary listing)
    kind: str  # ordinary | duplicate | placeholder
    picture: str  # the picture shown, whatever the file (a dataset photo or a placeholder)


def _title(rng: random.Random, category: str) -> str:
    return (
        f"{rng.choice(STYLES).title()} {rng.choice(COLOURS)} {rng.choice(MATERIALS)} "
        f"{category} {rng.randint(100, 999)}"
    )


def _relisted(title: str, rng: random.Random) -> str:
    """What a seller's copy-paste does to a title."""
    r = rng.random()
    if r < 0.25:
        return f"{title} {rng.choice(ADDED_WORDS)}"
    if r < 0.5:
        return title.upper()
    if r < 0.6:
        return title.replace(" ", "  ") + "!"
    return title


def _placeholder(design: str, seed: int) -> Image.Image:
    """One shop's placeholder of a design; each group its own (colours, layout, text), so
    that two groups are two pictures, as two shops' placeholders are."""
    rng = random.Random(seed)
    image = _placeholders()[design].copy()
    draw = ImageDraw.Draw(image)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    x, y = rng.randint(10, image.width - 150), rng.randint(10, 100)
    draw.rectangle((x, y, x + rng.randint(60, 140), y + rng.randint(20, 60)), fill=colour)
    draw.text((rng.randint(10, 200), image.height - 60), f"shop {seed}", fill=colour, font_size=30)
    return image


def _placeholders() -> dict[str, Image.Image]:
    grey = Image.new("RGB", (400, 400), (228, 228, 228))
    draw = ImageDraw.Draw(grey)
    draw.rounded_rectangle((130, 140, 270, 240), radius=14, outline=(160, 160, 160), width=8)
    draw.ellipse((170, 160, 230, 220), outline=(160, 160, 160), width=8)
    draw.text((150, 280), "NO PHOTO", fill=(140, 140, 140), font_size=28)
    blank = Image.new("RGB", (500, 500), (255, 255, 255))
    logo = Image.new("RGB", (600, 400), (20, 40, 90))
    draw = ImageDraw.Draw(logo)
    draw.ellipse((220, 80, 380, 240), fill=(240, 180, 30))
    draw.text((200, 280), "ACME WEAR", fill=(255, 255, 255), font_size=40)
    soon = Image.new("RGB", (400, 500), (250, 245, 235))
    draw = ImageDraw.Draw(soon)
    draw.rectangle((40, 200, 360, 300), fill=(200, 60, 60))
    draw.text((80, 230), "COMING SOON", fill=(255, 255, 255), font_size=34)
    return {"grey": grey, "blank": blank, "logo": logo, "soon": soon}


def build_catalog(
    folder: Path, seed: int, n_ordinary: int, *, smoke: bool = False
) -> list[Listing]:
    rng = random.Random(seed)
    photos = sorted(DATASET.glob("*/*.jpg"))
    rng.shuffle(photos)
    categories = sorted({p.parent.name for p in photos})
    listings: list[Listing] = []
    n = iter(range(10**6))

    def sku() -> str:
        return f"SKU-{next(n):05d}"

    def save(image: Image.Image, quality: int) -> str:
        name = f"f{len(list(folder.iterdir())):05d}.jpg"
        image.save(folder / name, format="JPEG", quality=quality)
        return name

    used = iter(photos)
    for _ in range(n_ordinary):
        photo = next(used)
        name = f"o-{photo.name}"
        shutil.copy(photo, folder / name)
        cat = photo.parent.name
        listings.append(Listing(sku(), cat, name, _title(rng, cat), "", "ordinary", photo.name))
    # The smoke mode plants one group of each kind that matters: a pair, a seller's 5 copies,
    # placeholders below and above the size gate.
    for k in (2, 5) if smoke else range(2, 9):
        for g in range(1 if smoke else 3):
            photo = next(used)
            cat = photo.parent.name
            group = f"dup-k{k}-{g}"
            title = _title(rng, cat)
            original = f"d-{photo.name}"
            shutil.copy(photo, folder / original)
            cross = g == 0 and k % 2 == 0  # about one group in five cross-listed
            for i in range(k):
                r = rng.random()
                if i == 0 or r < 0.4:
                    image = original  # the same file (one URL listed again)
                elif r < 0.7:
                    image = f"c{i}-{original}"
                    shutil.copy(folder / original, folder / image)
                else:
                    image = save(Image.open(photo).convert("RGB"), rng.randint(70, 92))
                category = (
                    rng.choice([c for c in categories if c != cat]) if cross and i == k - 1 else cat
                )
                listings.append(
                    Listing(
                        sku(),
                        category,
                        image,
                        title if i == 0 else _relisted(title, rng),
                        group,
                        "duplicate",
                        photo.name,
                    )
                )
    designs = list(_placeholders())
    sizes = [3, 6] if smoke else [3, 4, 5, 6, 8, 10, 15, 20, 30, 40]
    for j, size in enumerate(sizes):
        for n_cats in (1, 2):
            design = designs[(j + n_cats) % len(designs)]
            group = f"ph-n{size}-c{n_cats}"
            cats = rng.sample(categories, n_cats)
            picture = _placeholder(design, seed * 1000 + j * 10 + n_cats)
            picture.save(folder / f"ph-{group}.png")
            reencoded = save(picture, rng.randint(75, 92))
            for i in range(size):
                cat = cats[i % n_cats]
                title = cat.title() if rng.random() < 0.2 else _title(rng, cat)
                image = reencoded if rng.random() < 0.2 else f"ph-{group}.png"
                listings.append(Listing(sku(), cat, image, title, group, "placeholder", group))
    return listings


def run_stages(work: Path, listings: list[Listing]):
    from lookalike.config import Config
    from lookalike.pipeline import RunContext, run_stage
    from lookalike.session import build_session

    with open(work / "catalog.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        for x in listings:
            writer.writerow([x.sku_id, x.category, f"images/{x.image}", x.title, "true"])
    config = Config().with_overrides(
        spark={
            "master": "local[2]",
            "app_name": "lookalike-shared-photos",
            "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8"},
        },
        catalog={"path": str(work / "catalog.csv")},
        output={"root": str(work / "out")},
    )
    ctx = RunContext(config, dt.date(2026, 1, 1))
    spark = build_session(config)
    for stage in ("ingest", "embed", "index", "duplicates"):
        result = run_stage(stage, spark, ctx)
        print(f"  {stage:<10} {result.seconds:6.1f} s  {result.counts}")
    return spark, ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--ordinary", type=int, default=150)
    parser.add_argument(
        "--smoke", action="store_true", help="a few groups, 10 ordinary listings: seconds"
    )
    args = parser.parse_args()
    if args.smoke:
        args.ordinary = 10
    if not DATASET.is_dir():
        sys.exit(f"{DATASET} not found: this benchmark needs ../shared/datasets/clothing-small")
    from pyspark.sql import functions as F

    from lookalike.stages.duplicate_pairs import phash_pairs
    from lookalike.stages.shared_photos import photo_group_features, photo_groups

    work = Path(tempfile.mkdtemp(prefix="shared-photos-"))
    (work / "images").mkdir()
    listings = build_catalog(work / "images", args.seed, args.ordinary, smoke=args.smoke)
    by_sku = {x.sku_id: x for x in listings}
    print(f"catalog: {len(listings)} listings (seed {args.seed}) in {work}")
    started = time.perf_counter()
    spark, ctx = run_stages(work, listings)
    print(f"  stages took {time.perf_counter() - started:.0f} s")
    settings = ctx.config.duplicates
    embeddings_df = spark.read.parquet(str(ctx.layout.embeddings))
    catalog_df = spark.read.parquet(str(ctx.layout.catalog))

    # 1. The re-encoding threshold: files within phash_max_distance bits, descriptor cosine.
    files_df = (
        embeddings_df.groupBy("content_hash")
        .agg(F.min("sku_id").alias("sku_id"))
        .join(embeddings_df.drop("content_hash"), "sku_id")
    )
    close = phash_pairs(
        files_df,
        max_distance=settings.phash_max_distance,
        max_bucket=settings.phash_max_bucket,
        min_similarity=-1.0,
    ).collect()
    same, different = [], []
    for row in close:
        a, b = by_sku[row.sku_id_a], by_sku[row.sku_id_b]
        same_picture = a.picture == b.picture
        (same if same_picture else different).append(row.score)
    print(
        "\nre-encoded files vs distinct photos, pHash within "
        f"{settings.phash_max_distance} bits (descriptor cosine):"
    )
    if same:
        print(f"  same picture re-encoded: n={len(same)}, min {min(same):.4f}")
    if different:
        top = sorted(different, reverse=True)[:5]
        highest = ", ".join(f"{s:.4f}" for s in top)
        print(f"  distinct photos:         n={len(different)}, highest {highest}")
    else:
        print("  distinct photos:         none within that distance")

    # 2. What the stage saw of each planted group.
    groups_df = photo_groups(
        embeddings_df,
        max_distance=settings.phash_max_distance,
        max_bucket=settings.phash_max_bucket,
        min_similarity=settings.shared_photo_min_similarity,
    )
    features = {r.group_key: r for r in photo_group_features(groups_df, catalog_df).collect()}
    key_of = {r.sku_id: r.group_key for r in groups_df.collect()}
    planted: dict[str, list[str]] = defaultdict(list)
    for x in listings:
        if x.group:
            planted[x.group].append(x.sku_id)
    rows = []
    for group, skus in sorted(planted.items()):
        keys = {key_of.get(s) for s in skus}
        # A planted group split over several files' groups is scored on its largest part.
        key = max(keys, key=lambda k: (features[k].n_listings if k in features else 0, str(k)))
        f = features.get(key)
        n, t, c = (f.n_listings, f.n_titles, f.n_categories) if f else (1, 1, 1)
        rows.append((group, by_sku[skus[0]].kind, len(skus), n, t, c, len(keys)))
    print("\nplanted groups as the stage grouped them:")
    print("  group            kind         planted  grouped  titles  share  categories  parts")
    for group, kind, size, n, t, c, parts in rows:
        print(f"  {group:<16} {kind:<12} {size:>7} {n:>8} {t:>7} {t / n:>6.2f} {c:>11} {parts:>6}")

    # 3. The rule's sweep over its two settings, on those features.
    print(
        "\nlistings misjudged by (min_listings, min_title_share): "
        "duplicates set apart / placeholders left to cluster"
    )
    shares = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    print("  min_listings " + "".join(f"{s:>12}" for s in shares))
    for m in (3, 4, 5, 6, 8, 10):
        cells = []
        for s in shares:
            wrong_dup = sum(
                n
                for _, kind, _, n, t, c, _ in rows
                if kind == "duplicate" and n >= m and (c > 1 or t >= s * n)
            )
            missed = sum(
                n
                for _, kind, _, n, t, c, _ in rows
                if kind == "placeholder" and not (n >= m and (c > 1 or t >= s * n))
            )
            cells.append(f"{wrong_dup:>5} / {missed:<4}")
        print(f"  {m:>12} " + "".join(f"{c:>12}" for c in cells))
    n_dup = sum(size for _, kind, size, *_ in rows if kind == "duplicate")
    n_ph = sum(size for _, kind, size, *_ in rows if kind == "placeholder")
    print(f"  (of {n_dup} listings in real duplicate groups, {n_ph} on placeholders)")

    # 4. The stage's own outcome at the configured settings.
    shared = {r.sku_id for r in spark.read.parquet(str(ctx.layout.shared_photos)).collect()}
    clustered = {r.sku_id for r in spark.read.parquet(str(ctx.layout.duplicate_clusters)).collect()}
    dup_skus = {s for g, skus in planted.items() if g.startswith("dup") for s in skus}
    ph_skus = {s for g, skus in planted.items() if g.startswith("ph") for s in skus}
    print(
        f"\nat the configured settings (min_listings {settings.shared_photo_min_listings}, "
        f"min_title_share {settings.shared_photo_min_title_share}):"
    )
    outcome = [
        ("real duplicate listings set apart as shared photos", dup_skus & shared, dup_skus),
        ("real duplicate listings in a cluster", dup_skus & clustered, dup_skus),
        ("placeholder listings set apart", ph_skus & shared, ph_skus),
        ("placeholder listings in a cluster", ph_skus & clustered, ph_skus),
    ]
    for what, got, of in outcome:
        print(f"  {what + ':':<52} {len(got)} of {len(of)}")
    print(f"  {'ordinary listings set apart:':<52} {len(shared - dup_skus - ph_skus)}")
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
