"""The bundled demo catalogue: product photos drawn with PIL and numpy, for `make demo` and tests.

A fresh machine has no datasets, so the default catalogue is generated here: eight categories of
products on a light studio background, planted duplicate listings (exact copies, re-encoded,
resized, cropped, watermarked and mirrored photos) and a few broken rows that the job must reject
with a known reason. The same arguments always produce byte-identical files.

The drawing is tuned for the duplicate threshold. Measured with torchvision's ImageNet
MobileNet-V2 (pooled 1280-d features, cosine) on the default catalogue: different products of one
category reach at most 0.886 (99.9th percentile 0.881), while every transform applied to every
original scores at least 0.956 re-encoded, 0.937 resized, 0.979 watermarked, 0.943 mirrored and
0.917 cropped; 93% of products have a nearest neighbour of their own category. Other seeds give
different-product maxima up to 0.911: a threshold of about 0.92 keeps different products apart
and finds every re-encoded, resized, watermarked and mirrored copy (a few cropped ones fall below).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

__all__ = [
    "CATEGORIES",
    "GENERATOR_VERSION",
    "TRANSFORMS",
    "DemoCatalog",
    "generate_demo_catalog",
]

# Bump whenever the output for the same arguments changes, so existing demo folders regenerate.
GENERATOR_VERSION = 1

CATEGORIES = ("tops", "mugs", "bottles", "sneakers", "lamps", "backpacks", "hats", "chairs")
TRANSFORMS = ("exact", "reencoded", "resized", "cropped", "watermarked", "mirrored")

CATALOG_HEADER = ("sku_id", "category", "image_uri", "title", "is_active", "updated_at")
PLANTED_HEADER = ("sku_id", "original_sku_id", "transform")
REJECTS_HEADER = ("sku_id", "stage", "reason")

HOSTILE_TITLE = '<script>alert("x")</script> & "quoted", mug'

_JPEG_QUALITY = 90
_REENCODE_QUALITY = 35
_SUPERSAMPLE = 2  # drawn at twice the size, then downsampled: cheap anti-aliasing
_PLANTED_SHARE = 0.13
_INACTIVE_SHARE = 0.08
_PNG_SHARE = 0.05
_MIN_PRODUCTS = 2 * len(CATEGORIES)
# Structural sub-styles per variant (leg style, back style, base, pocket...): 12 = 2*2*3 = 4*3.
_FORMS = 12
_YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)

RGB = tuple[int, int, int]
Point = tuple[float, float]
LogoSpot = tuple[float, float, float]  # centre u, v and size of a logo, in product units

_COLOURS: tuple[tuple[str, RGB], ...] = (
    ("Red", (200, 38, 44)),
    ("Burgundy", (118, 24, 46)),
    ("Orange", (236, 122, 34)),
    ("Mustard", (212, 168, 38)),
    ("Yellow", (246, 214, 58)),
    ("Olive", (108, 118, 44)),
    ("Green", (46, 148, 72)),
    ("Mint", (150, 215, 180)),
    ("Teal", (24, 128, 134)),
    ("Sky blue", (108, 174, 226)),
    ("Blue", (38, 88, 200)),
    ("Navy", (28, 38, 88)),
    ("Purple", (108, 58, 150)),
    ("Lilac", (190, 160, 220)),
    ("Pink", (236, 128, 170)),
    ("Brown", (118, 74, 44)),
    ("Beige", (214, 194, 158)),
    ("Grey", (128, 128, 134)),
    ("Charcoal", (54, 54, 60)),
    ("Black", (24, 24, 28)),
    ("White", (238, 238, 234)),
)
_PATTERNS = ("solid", "striped", "dotted", "checked", "two-tone", "camo", "chevron")
_PATTERN_WORDS = {
    "solid": "",
    "striped": "striped",
    "dotted": "polka-dot",
    "checked": "checked",
    "two-tone": "two-tone",
    "camo": "camo",
    "chevron": "zigzag",
}
_VARIANTS: dict[str, tuple[str, ...]] = {
    "tops": ("t-shirt", "long-sleeve", "tank top", "hoodie"),
    "mugs": ("mug", "espresso cup", "tall mug", "travel mug"),
    "bottles": ("water bottle", "glass bottle", "flask", "sports bottle"),
    "sneakers": ("low-top", "high-top", "runner", "ankle boot"),
    "lamps": ("table lamp", "floor lamp", "dome lamp", "desk lamp"),
    "backpacks": ("daypack", "rolltop", "school bag", "hiking pack"),
    "hats": ("cap", "beanie", "bucket hat", "sun hat"),
    "chairs": ("dining chair", "armchair", "bar stool", "office chair"),
}
_METALS: tuple[RGB, ...] = ((184, 150, 78), (30, 30, 32), (192, 196, 202), (150, 104, 62))
_WOODS: tuple[RGB, ...] = ((196, 156, 104), (104, 66, 40), (34, 32, 30), (232, 230, 224))
_SOLES: tuple[RGB, ...] = ((244, 244, 240), (30, 30, 32), (178, 120, 62))
_BRANDS = ("NOVA", "kiro", "ZEN", "atlas", "LUMO", "PIXA", "orbit", "MOSS")
_WATERMARKS = ("SALE", "ShopMart", "BestDeals", "-30%", "outlet24")


@dataclass(frozen=True)
class DemoCatalog:
    """Where a generated demo catalogue lies; every path is inside `root`."""

    root: Path
    catalog_path: Path
    planted_duplicates: Path
    expected_rejects: Path

    @classmethod
    def at(cls, root: Path) -> DemoCatalog:
        return cls(
            root=root,
            catalog_path=root / "catalog.csv",
            planted_duplicates=root / "planted_duplicates.csv",
            expected_rejects=root / "expected_rejects.csv",
        )


def generate_demo_catalog(
    root: Path,
    *,
    n_products: int = 240,
    seed: int = 7,
    include_bad_rows: bool = True,
    image_size: int = 320,
) -> DemoCatalog:
    """Write the demo catalogue into `root` (unless an identical one is already there).

    `root` is created, or replaced when it holds an earlier demo catalogue (it has a
    `.manifest.json`); any other existing folder is refused rather than overwritten.
    """
    if n_products < _MIN_PRODUCTS:
        raise ValueError(f"n_products must be at least {_MIN_PRODUCTS}, got {n_products}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    root = Path(root)
    manifest = {
        "generator": "demo.catalog",
        "version": GENERATOR_VERSION,
        "n_products": n_products,
        "seed": seed,
        "include_bad_rows": include_bad_rows,
        "image_size": image_size,
    }
    catalog = DemoCatalog.at(root)
    manifest_path = root / ".manifest.json"
    if root.exists():
        if not manifest_path.is_file():
            raise FileExistsError(f"{root} exists and is not a demo catalogue; refusing to replace")
        if _read_json(manifest_path) == manifest and catalog.catalog_path.is_file():
            return catalog

    root.parent.mkdir(parents=True, exist_ok=True)
    # Built beside root and renamed into place, so an interrupted run never leaves half a catalogue.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would follow the folder after the rename
        _write_catalog(
            tmp,
            n_products=n_products,
            seed=seed,
            include_bad_rows=include_bad_rows,
            image_size=image_size,
        )
        # The manifest is written last: its presence means the folder is complete.
        (tmp / ".manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return catalog


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# The catalogue: which products, which copies, which broken rows
# --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    sku_id: str
    category: str
    image_uri: str
    title: str
    is_active: bool
    updated_at: str

    def as_csv(self) -> tuple[str, ...]:
        active = "true" if self.is_active else "false"
        return (self.sku_id, self.category, self.image_uri, self.title, active, self.updated_at)


@dataclass(frozen=True)
class _Look:
    """Everything that makes one product look like itself; drawn by its category's function."""

    category: str
    variant: str
    pattern: str
    colour_name: str
    colour: RGB
    accent_name: str
    accent: RGB
    logo: str
    brand: str
    draw_seed: int
    form: int  # dealt from 0.._FORMS-1 per (category, variant): the drawer's structural choices

    def pick(self, n: int, after: int = 1) -> int:
        """One structural choice out of `n`, read from `form` as a mixed-radix digit."""
        return (self.form // after) % n


def _write_catalog(
    out: Path, *, n_products: int, seed: int, include_bad_rows: bool, image_size: int
) -> None:
    rng = np.random.default_rng([seed, 0])
    looks = _plan_looks(n_products, rng)

    n_planted = max(round(n_products * _PLANTED_SHARE), len(TRANSFORMS) + 3)
    per_other = max(1, n_planted // len(TRANSFORMS))
    counts = {t: per_other for t in TRANSFORMS}
    counts["exact"] = max(4, n_planted - per_other * (len(TRANSFORMS) - 1))
    transforms = [t for t in TRANSFORMS for _ in range(counts[t])]
    n_planted = len(transforms)

    # sku_ids are a shuffled range, so copies sit among the originals as in a real feed.
    numbers = rng.permutation(n_products + n_planted) + 1
    skus = [f"SKU-{k:06d}" for k in numbers]
    original_skus, planted_skus = skus[:n_products], skus[n_products:]

    # The hostile title goes on an ordinary, active mug that is no one's original.
    hostile = next(i for i, lk in enumerate(looks) if lk.category == "mugs")
    others = [i for i in range(n_products) if i != hostile]
    originals_of_copies = [int(i) for i in rng.choice(others, size=n_planted, replace=False)]
    in_pairs = set(originals_of_copies)
    candidates = [i for i in others if i not in in_pairs]
    n_inactive = round((n_products + n_planted) * _INACTIVE_SHARE)
    inactive = {int(i) for i in rng.choice(candidates, size=n_inactive, replace=False)}
    as_png = {int(i) for i in range(n_products) if rng.random() < _PNG_SHARE}

    rels = [
        f"images/{look.category}/{original_skus[i]}{'.png' if i in as_png else '.jpg'}"
        for i, look in enumerate(looks)
    ]
    # Each photo depends only on its own look, so threads (PIL and numpy release the GIL)
    # change the speed, never the bytes.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(
            pool.map(
                lambda i: _save(_render_product(looks[i], image_size), out / rels[i]),
                range(n_products),
            )
        )

    rows: list[_Row] = []
    image_of = {i: out / rel for i, rel in enumerate(rels)}
    for i, look in enumerate(looks):
        rel = rels[i]
        title = (
            HOSTILE_TITLE if i == hostile else _title(look, np.random.default_rng(look.draw_seed))
        )
        rows.append(
            _Row(original_skus[i], look.category, rel, title, i not in inactive, _timestamp(rng))
        )

    planted: list[tuple[str, str, str]] = []
    for sku, i, transform in zip(planted_skus, originals_of_copies, transforms, strict=True):
        src = image_of[i]
        ext = ".jpg" if transform == "reencoded" else src.suffix
        rel = f"images/{looks[i].category}/{sku}{ext}"
        _plant_copy(src, out / rel, transform, np.random.default_rng([seed, 1, len(planted)]))
        original = rows[i]
        rows.append(_Row(sku, original.category, rel, original.title, True, _timestamp(rng)))
        planted.append((sku, original_skus[i], transform))

    rows.sort(key=lambda r: r.sku_id)
    rejects: list[tuple[str, str, str]] = []
    if include_bad_rows:
        bad_rows, rejects = _bad_rows(out, n_products + n_planted, seed, image_size, rng)
        rows.extend(bad_rows)

    _write_csv(out / "catalog.csv", CATALOG_HEADER, [r.as_csv() for r in rows])
    _write_csv(out / "planted_duplicates.csv", PLANTED_HEADER, sorted(planted))
    _write_csv(out / "expected_rejects.csv", REJECTS_HEADER, rejects)


def _plan_looks(n_products: int, rng: np.random.Generator) -> list[_Look]:
    """One look per product: balanced categories, no two alike within a category."""
    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(n_products)]
    categories = [categories[int(i)] for i in rng.permutation(n_products)]
    # Each category deals its (variant, pattern) pairs and its colours like cards: every pair
    # comes once before any comes twice, so two products of a category differ in shape or
    # pattern more often than in colour alone, which the image model barely sees. Products
    # that share a pattern also get clearly different colours where the deck allows.
    styles: dict[str, list[tuple[int, int]]] = {}
    paints: dict[str, list[int]] = {}
    used: dict[tuple[str, int], list[RGB]] = {}
    forms: dict[tuple[str, int], list[int]] = {}
    looks = []
    for index, category in enumerate(categories):
        if not styles.get(category):
            pairs = [(v, p) for v in range(len(_VARIANTS[category])) for p in range(len(_PATTERNS))]
            styles[category] = [pairs[int(k)] for k in rng.permutation(len(pairs))]
        if not paints.get(category):
            paints[category] = [int(k) for k in rng.permutation(len(_COLOURS))]
        v, p = styles[category].pop()
        deck, taken = paints[category], used.setdefault((category, p), [])
        pick = next(
            (
                k
                for k in reversed(range(len(deck)))
                if all(_distance(_COLOURS[deck[k]][1], t) >= 140 for t in taken)
            ),
            len(deck) - 1,
        )
        c = deck.pop(pick)
        taken.append(_COLOURS[c][1])
        # Sub-styles are dealt too: products of one variant differ in structure first.
        if not forms.get((category, v)):
            forms[(category, v)] = [int(k) for k in rng.permutation(_FORMS)]
        form = forms[(category, v)].pop()
        colour_name, colour = _COLOURS[c]
        accent_name, accent = _contrasting(colour, rng)
        looks.append(
            _Look(
                category=category,
                variant=_VARIANTS[category][v],
                pattern=_PATTERNS[p],
                colour_name=colour_name,
                colour=_jitter(colour, rng, 14),
                accent_name=accent_name,
                accent=_jitter(accent, rng, 14),
                logo=str(rng.choice(["none", "circle", "star", "wordmark", "bars", "diamond"])),
                brand=str(rng.choice(_BRANDS)),
                draw_seed=int(rng.integers(2**31)) ^ index,
                form=form,
            )
        )
    return looks


def _contrasting(colour: RGB, rng: np.random.Generator) -> tuple[str, RGB]:
    options = [(n, c) for n, c in _COLOURS if _distance(c, colour) > 150]
    name, rgb = options[int(rng.integers(len(options)))]
    return name, rgb


def _distance(a: RGB, b: RGB) -> float:
    return math.dist(a, b)


def _jitter(colour: RGB, rng: np.random.Generator, amount: int) -> RGB:
    shifted = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def _timestamp(rng: np.random.Generator) -> str:
    moment = _YEAR_START + timedelta(seconds=int(rng.integers(0, 365 * 24 * 3600)))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _title(look: _Look, rng: np.random.Generator) -> str:
    colour = look.colour_name
    if look.pattern == "two-tone":
        colour = f"{look.colour_name} and {look.accent_name.lower()}"
    elif look.pattern != "solid":
        colour = f"{look.colour_name} {_PATTERN_WORDS[look.pattern]}"
    noun, size = {
        "tops": (
            {
                "t-shirt": "V-neck t-shirt" if _is_v_neck(look) else "t-shirt",
                "long-sleeve": "long-sleeve top",
            },
            f", size {rng.choice(['XS', 'S', 'M', 'L', 'XL'])}",
        ),
        "mugs": ({}, f" {int(rng.choice([250, 300, 350, 400, 450]))} ml"),
        "bottles": ({}, f" {rng.choice(['500 ml', '750 ml', '1 L'])}"),
        "sneakers": (
            {
                "low-top": "sneakers",
                "high-top": "high-top sneakers",
                "runner": "running shoes",
                "ankle boot": "ankle boots",
            },
            f", EU {int(rng.integers(36, 47))}",
        ),
        "lamps": ({}, f", {int(rng.integers(30, 160))} cm"),
        "backpacks": (
            {
                "school bag": "school backpack",
                "rolltop": "roll-top backpack",
                "hiking pack": "hiking backpack",
            },
            f" {int(rng.choice([15, 18, 20, 24, 28, 32]))} L",
        ),
        "hats": ({}, rng.choice([", one size", " 56 cm", " 58 cm"])),
        "chairs": ({}, rng.choice(["", ", set of 2", " with cushion"])),
    }[look.category]
    return f"{colour} {noun.get(look.variant, look.variant)}{size}"


def _bad_rows(
    out: Path, first_number: int, seed: int, image_size: int, rng: np.random.Generator
) -> tuple[list[_Row], list[tuple[str, str, str]]]:
    """Rows the job must reject, each with the one fault that names its reason code."""
    numbers = iter(range(first_number + 1, first_number + 100))
    ids = {
        name: f"SKU-{next(numbers):06d}"
        for name in (
            "duplicate",
            "not_found",
            "empty",
            "truncated",
            "undecodable",
            "no_category",
            "outside",
        )
    }

    def product(k: int, category: str) -> tuple[Image.Image, str]:
        looks = _plan_looks(len(CATEGORIES), np.random.default_rng([seed, 2, k]))
        look = next(lk for lk in looks if lk.category == category)
        return _render_product(look, image_size), _title(look, np.random.default_rng(k))

    def row(key: str, category: str, uri: str, title: str) -> _Row:
        return _Row(ids[key], category, uri, title, True, _timestamp(rng))

    # Two different backpacks listed under one sku_id: neither row can be trusted.
    dup_a = f"images/backpacks/{ids['duplicate']}.jpg"
    dup_b = f"images/backpacks/{ids['duplicate']}_b.jpg"
    image_a, title_a = product(0, "backpacks")
    image_b, title_b = product(1, "backpacks")
    _save(image_a, out / dup_a)
    _save(image_b, out / dup_b)

    empty = f"images/hats/{ids['empty']}.jpg"
    (out / empty).write_bytes(b"")

    # A download cut off halfway: the JPEG header is fine, the scan data ends early.
    truncated = f"images/lamps/{ids['truncated']}.jpg"
    lamp, lamp_title = product(2, "lamps")
    whole = _jpeg_bytes(lamp, _JPEG_QUALITY)
    (out / truncated).write_bytes(whole[: len(whole) // 2])

    # An error page saved under the image's name.
    undecodable = f"images/chairs/{ids['undecodable']}.jpg"
    (out / undecodable).write_text("404 Not Found\nThe image you requested could not be found.\n")

    no_category = f"images/sneakers/{ids['no_category']}.jpg"
    sneaker, sneaker_title = product(3, "sneakers")
    _save(sneaker, out / no_category)

    rows = [
        row("duplicate", "backpacks", dup_a, title_a),
        row("not_found", "mugs", f"images/mugs/{ids['not_found']}.jpg", "White mug 300 ml"),
        row("empty", "hats", empty, "Black beanie, one size"),
        row("duplicate", "backpacks", dup_b, title_b),
        row("truncated", "lamps", truncated, lamp_title),
        row("undecodable", "chairs", undecodable, "Oak dining chair"),
        row("no_category", "", no_category, sneaker_title),
        row("outside", "bottles", "../../../etc/passwd", "Blue water bottle 750 ml"),
    ]
    rejects = [
        (ids["not_found"], "embed", "image_not_found"),
        (ids["empty"], "embed", "image_empty"),
        (ids["truncated"], "embed", "image_truncated"),
        (ids["undecodable"], "embed", "image_not_an_image"),
        (ids["duplicate"], "ingest", "duplicate_sku_id"),
        (ids["no_category"], "ingest", "missing_category"),
        (ids["outside"], "ingest", "image_outside_roots"),
    ]
    return rows, sorted(rejects)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# Files: saving and the planted copies
# --------------------------------------------------------------------------------------------


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    # Fixed quality and subsampling, no optimize/progressive: the same pixels give the same bytes.
    image.convert("RGB").save(buffer, "JPEG", quality=quality, subsampling=2, optimize=False)
    return buffer.getvalue()


def _save(image: Image.Image, path: Path, quality: int = _JPEG_QUALITY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG", compress_level=6)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(_jpeg_bytes(image, quality))


def _plant_copy(src: Path, dst: Path, transform: str, rng: np.random.Generator) -> None:
    """A new listing's photo made from an existing listing's photo, as sellers re-list them."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if transform == "exact":
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as opened:
        image = opened.convert("RGB")
    w, h = image.size
    if transform == "reencoded":
        _save(image, dst, quality=_REENCODE_QUALITY)
        return
    if transform == "resized":
        image = image.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    elif transform == "cropped":
        # 8-12% of each dimension in all, shared unevenly between the two opposite borders.
        fx, fy = rng.uniform(0.08, 0.12, size=2)
        sx, sy = rng.uniform(0.25, 0.75, size=2)
        left, top = round(w * fx * sx), round(h * fy * sy)
        right, bottom = w - round(w * fx * (1 - sx)), h - round(h * fy * (1 - sy))
        image = image.crop((left, top, right, bottom))
    elif transform == "watermarked":
        image = _watermark(image, rng)
    elif transform == "mirrored":
        image = ImageOps.mirror(image)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    _save(image, dst)


def _watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    text = str(rng.choice(_WATERMARKS))
    font = _font(max(10, round(h * rng.uniform(0.06, 0.08))))
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    margin = round(w * 0.03)
    corner = int(rng.integers(4))
    x = margin if corner % 2 == 0 else w - margin - (x1 - x0)
    y = margin if corner < 2 else h - margin - (y1 - y0)
    colour = (200, 30, 30) if text in ("SALE", "-30%") else (60, 60, 60)
    draw.text((x - x0, y - y0), text, font=font, fill=(*colour, 120))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font still works
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


class _Pen:
    """Draws in product units (about -0.5..0.5 across the product) on a transparent layer."""

    def __init__(self, size: int, cx: float, cy: float, scale: float, look: _Look) -> None:
        self.size = size
        self.cx, self.cy, self.s = cx, cy, scale
        self.layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.layer)
        self.fabric = _pattern_image(self, look, np.random.default_rng(look.draw_seed + 1))

    def pt(self, u: float, v: float) -> Point:
        return (self.cx + u * self.s, self.cy + v * self.s)

    def pts(self, points: Sequence[Point]) -> list[Point]:
        return [self.pt(u, v) for u, v in points]

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        (x0, y0), (x1, y1) = self.pt(u0, v0), self.pt(u1, v1)
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def px(self, units: float) -> int:
        return max(1, round(units * self.s))

    def polygon(
        self,
        points: Sequence[Point],
        fill: RGB | None,
        outline: RGB | None = None,
        width: float = 0.006,
    ) -> None:
        xy = self.pts(points)
        if fill is not None:
            self.draw.polygon(xy, fill=(*fill, 255))
        if outline is not None:
            self.draw.line([*xy, xy[0]], fill=(*outline, 255), width=self.px(width), joint="curve")

    def ellipse(
        self,
        u0: float,
        v0: float,
        u1: float,
        v1: float,
        fill: RGB | None,
        outline: RGB | None = None,
        width: float = 0.006,
    ) -> None:
        self.draw.ellipse(
            self.box(u0, v0, u1, v1),
            fill=None if fill is None else (*fill, 255),
            outline=None if outline is None else (*outline, 255),
            width=self.px(width) if outline is not None else 0,
        )

    def line(self, points: Sequence[Point], colour: RGB, width: float) -> None:
        self.draw.line(self.pts(points), fill=(*colour, 255), width=self.px(width), joint="curve")

    def clear_ellipse(self, u0: float, v0: float, u1: float, v1: float) -> None:
        self.draw.ellipse(self.box(u0, v0, u1, v1), fill=(0, 0, 0, 0))

    def fill_with(self, shape: Callable[[ImageDraw.ImageDraw], None]) -> None:
        """Paints the product's fabric (its colour and pattern) through a shape."""
        mask = Image.new("L", (self.size, self.size), 0)
        shape(ImageDraw.Draw(mask))
        self.layer.paste(self.fabric, (0, 0), mask)

    def fabric_polygon(self, points: Sequence[Point], outline: RGB | None = None) -> None:
        xy = self.pts(points)
        self.fill_with(lambda d: d.polygon(xy, fill=255))
        if outline is not None:
            self.draw.line([*xy, xy[0]], fill=(*outline, 255), width=self.px(0.006), joint="curve")

    def fabric_ellipse(
        self, u0: float, v0: float, u1: float, v1: float, outline: RGB | None = None
    ) -> None:
        box = self.box(u0, v0, u1, v1)
        self.fill_with(lambda d: d.ellipse(box, fill=255))
        if outline is not None:
            self.draw.ellipse(box, outline=(*outline, 255), width=self.px(0.006))

    def fabric_rounded(
        self, u0: float, v0: float, u1: float, v1: float, radius: float, outline: RGB | None = None
    ) -> None:
        box, r = self.box(u0, v0, u1, v1), self.px(radius)
        self.fill_with(lambda d: d.rounded_rectangle(box, r, fill=255))
        if outline is not None:
            self.draw.rounded_rectangle(box, r, outline=(*outline, 255), width=self.px(0.006))

    def shade_cylinder(self, u0: float, u1: float, v0: float, v1: float) -> None:
        """Darkens the sides of a round body, so mugs and bottles read as 3-D objects."""
        (x0, y0), (x1, y1) = self.pt(u0, v0), self.pt(u1, v1)
        x0, x1 = sorted((max(int(x0), 0), min(int(x1), self.size)))
        y0, y1 = sorted((max(int(y0), 0), min(int(y1), self.size)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        region = np.asarray(self.layer.crop((x0, y0, x1, y1)), dtype=np.float32)
        t = np.linspace(-1.0, 1.0, x1 - x0, dtype=np.float32)
        # Light from the upper left: a highlight left of centre, darker right edge.
        gain = 0.80 + 0.26 * np.cos((t + 0.25) * math.pi / 2.6) ** 2
        gain += 0.10 * np.exp(-(((t + 0.45) / 0.12) ** 2))
        region[..., :3] *= gain[None, :, None]
        self.layer.paste(
            Image.fromarray(np.clip(region, 0, 255).astype(np.uint8), "RGBA"), (x0, y0)
        )


def _pattern_image(pen: _Pen, look: _Look, rng: np.random.Generator) -> Image.Image:
    """The product's material over the whole layer: solid, stripes, dots, checks, two tones,
    camouflage or zigzag, in its colour and accent colour."""
    size = pen.size
    # Open grids broadcast to the full layer only where a pattern needs both axes.
    yy, xx = np.ogrid[0:size, 0:size]
    xx = (xx.astype(np.float32) - pen.cx) / pen.s
    yy = (yy.astype(np.float32) - pen.cy) / pen.s
    if look.pattern == "striped":
        angle = math.radians(float(rng.choice([0.0, 90.0, 45.0, -45.0])) + rng.uniform(-5, 5))
        period = rng.uniform(0.08, 0.16)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        index = 2 * ((t % 1.0) < rng.uniform(0.3, 0.6))
    elif look.pattern == "dotted":
        period = rng.uniform(0.09, 0.15)
        radius = period * rng.uniform(0.2, 0.32)
        row = np.floor(yy / period)
        # Every other row shifted by half a period, as printed polka dots are.
        dx = (xx + (row % 2) * period / 2) % period - period / 2
        dy = yy % period - period / 2
        index = 2 * ((dx * dx + dy * dy) < radius * radius)
    elif look.pattern == "checked":
        period = rng.uniform(0.08, 0.16)
        # Gingham: where the bands cross is the full accent, one band alone is the half-tone.
        index = (np.floor(xx / period) % 2) + (np.floor(yy / period) % 2)
    elif look.pattern == "two-tone":
        index = 2 * (yy > rng.uniform(-0.1, 0.15)) + 0 * xx
    elif look.pattern == "camo":
        # Smooth random blobs: coarse noise, upsampled, cut at two levels into three tones.
        cells = max(2, round(size / (pen.s * rng.uniform(0.12, 0.2))))
        noise = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
        smooth = np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC))
        index = (smooth > 100).astype(np.uint8) + (smooth > 165)
    elif look.pattern == "chevron":
        period = rng.uniform(0.08, 0.16)
        zig = np.abs((xx / period) % 1.0 - 0.5) * period * rng.uniform(0.6, 1.2)
        index = 2 * (((yy + zig) / period) % 1.0 < 0.5) + 0 * xx
    else:
        index = np.zeros((size, size))
    indexed = Image.fromarray(np.broadcast_to(index, (size, size)).astype(np.uint8), "P")
    half = tuple((a + b) // 2 for a, b in zip(look.colour, look.accent, strict=True))
    indexed.putpalette([*look.colour, *half, *look.accent])
    return indexed.convert("RGBA")


def _render_product(look: _Look, image_size: int) -> Image.Image:
    """One studio photo: background, soft shadow, the product, small tilt; `image_size` square."""
    rng = np.random.default_rng(look.draw_seed)
    size = image_size * _SUPERSAMPLE
    # Framing differs from photo to photo; tall, thin products (lamps, chairs) are framed
    # tighter. The product (about one unit across) always stays inside the picture.
    fill = (
        rng.uniform(0.66, 0.94) if look.category in ("lamps", "chairs") else rng.uniform(0.56, 0.9)
    )
    scale = size * fill
    slack = max(0.0, (1.0 - fill) / 2 - 0.03)
    cx = size * (0.5 + rng.uniform(-slack, slack))
    cy = size * (0.5 + rng.uniform(-slack, slack) * 0.6)
    pen = _Pen(size, cx, cy, scale, look)
    logo_spot = _DRAWERS[look.category](pen, look, rng)
    _draw_logo(pen, look, logo_spot)

    # Flat-lay and hand-held shots come at any angle; standing objects only a little tilted.
    tilt = {"tops": 16.0, "sneakers": 16.0, "hats": 14.0, "backpacks": 10.0}
    angle = float(rng.uniform(-1.0, 1.0)) * tilt.get(look.category, 7.0)
    # Drawn large and box-downsampled (anti-aliasing), then tilted at the final size, four
    # times cheaper than at the drawing size. Premultiplied alpha keeps the transparent
    # pixels' black out of the edges.
    product = (
        pen.layer.convert("RGBa")
        .reduce(_SUPERSAMPLE)
        .rotate(angle, Image.Resampling.BILINEAR, center=(cx / _SUPERSAMPLE, cy / _SUPERSAMPLE))
        .convert("RGBA")
    )
    n = image_size
    photo = _studio_background(n, rng)
    blurred = product.getchannel("A").filter(ImageFilter.GaussianBlur(n * 0.018))
    offset = (round(n * rng.uniform(0.005, 0.02)), round(n * rng.uniform(0.015, 0.03)))
    shadow = Image.new("RGBA", (n, n), (40, 38, 36, 0))
    shadow.putalpha(_shifted(blurred.point(lambda a: a * 0.28), offset))
    photo = Image.alpha_composite(photo, shadow)
    photo = Image.alpha_composite(photo, product).convert("RGB")
    # A camera is never pixel-sharp; without this softness a 50% downscale or a low JPEG
    # quality changes a drawing far more than it changes a photo.
    return photo.filter(ImageFilter.GaussianBlur(0.7 * n / 320))


def _shifted(image: Image.Image, offset: tuple[int, int]) -> Image.Image:
    shifted = Image.new(image.mode, image.size, 0)
    shifted.paste(image, offset)
    return shifted


def _studio_background(size: int, rng: np.random.Generator) -> Image.Image:
    """White or light grey seamless paper, a little darker towards the bottom."""
    grey = float(rng.uniform(238, 252))
    base = np.asarray(_jitter((round(grey),) * 3, rng, 2), dtype=np.float32)
    fall = rng.uniform(0.0, 0.07)
    ramp = 1.0 - fall * np.linspace(0.0, 1.0, size, dtype=np.float32) ** 2
    column = np.clip(base[None, :] * ramp[:, None], 0, 255).astype(np.uint8)  # one per row
    rgb = np.broadcast_to(column[:, None, :], (size, size, 3))
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("RGBA")


def _darker(colour: RGB, factor: float = 0.6) -> RGB:
    return (int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor))


def _lighter(colour: RGB, amount: float = 0.5) -> RGB:
    r, g, b = (int(c + (255 - c) * amount) for c in colour)
    return (r, g, b)


def _chaikin(points: Sequence[Point], rounds: int = 2) -> list[Point]:
    """Rounds a closed polygon's corners: organic outlines from a few control points."""
    pts = np.asarray(points, dtype=np.float64)
    for _ in range(rounds):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
    return [(float(u), float(v)) for u, v in pts]


def _arc(
    cu: float, cv: float, ru: float, rv: float, a0: float, a1: float, n: int = 16
) -> list[Point]:
    angles = np.linspace(math.radians(a0), math.radians(a1), n)
    return [(cu + ru * math.cos(a), cv + rv * math.sin(a)) for a in angles]


def _bezier(p0: Point, p1: Point, p2: Point, n: int = 10) -> list[Point]:
    t = np.linspace(0.0, 1.0, n)
    return [
        (
            float((1 - k) ** 2 * p0[0] + 2 * (1 - k) * k * p1[0] + k**2 * p2[0]),
            float((1 - k) ** 2 * p0[1] + 2 * (1 - k) * k * p1[1] + k**2 * p2[1]),
        )
        for k in t
    ]


def _rect(u0: float, v0: float, u1: float, v1: float) -> list[Point]:
    return [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]


def _mirror(points: Sequence[Point]) -> list[Point]:
    return [(-u, v) for u, v in reversed(points)]


# Each drawer places its product in roughly -0.5..0.5 units and returns where a logo fits.


def _is_v_neck(look: _Look) -> bool:
    # Not a variant of its own: to the image model a V-neck is a crew-neck t-shirt.
    return look.variant == "t-shirt" and look.draw_seed % 3 == 0


def _draw_top(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    bw = rng.uniform(0.22, 0.31)
    top = -0.40
    hem = rng.uniform(0.34, 0.46)
    flare = rng.uniform(-0.02, 0.04)
    nw = rng.uniform(0.08, 0.12)
    sh = bw + rng.uniform(0.02, 0.06)
    if look.variant in ("long-sleeve", "hoodie"):
        reach, drop = rng.uniform(0.12, 0.2), rng.uniform(0.22, 0.34)
        sleeve = [
            (sh, top + 0.04),
            (sh + reach, drop),
            (sh + reach - 0.09, drop + 0.03),
            (bw, -0.08),
        ]
    elif look.variant == "tank top":
        strap = nw + rng.uniform(0.04, 0.08)
        armhole = _bezier((strap, top), (strap + 0.01, -0.12), (bw, rng.uniform(-0.14, -0.06)))
        sleeve = [(strap, top), *armhole[1:]]
    else:
        reach = rng.uniform(0.13, 0.2)
        sleeve = [(sh, top + 0.04), (sh + reach, -0.17), (sh + reach - 0.08, -0.06), (bw, -0.13)]
    depth = rng.uniform(0.14, 0.2) if _is_v_neck(look) else rng.uniform(0.05, 0.09)
    if _is_v_neck(look):
        neck = [(-nw, top), (0.0, top + depth), (nw, top)]
    else:
        neck = _arc(0.0, top, nw, depth, 180, 0, 12)
    right = [(nw, top), *sleeve, (bw + flare, hem)]
    outline = right + _mirror(right) + neck
    if look.variant == "hoodie":
        # The hood lies behind the shoulders, its opening framing the neck.
        hood_w = nw + rng.uniform(0.08, 0.12)
        pen.fabric_ellipse(-hood_w, top - rng.uniform(0.14, 0.2), hood_w, top + 0.1, outline=edge)
        pen.ellipse(-nw - 0.02, top - 0.08, nw + 0.02, top + depth, _darker(c, 0.4))
    else:
        # The inside of the back shows through the neck opening.
        pen.ellipse(-nw, top - 0.025, nw, top + depth * 0.7, _darker(c, 0.45))
    pen.fabric_polygon(outline, outline=edge)
    trim_kind = look.pick(3, after=4)  # dark trim, contrast trim, contrast trim and hem band
    trim = _darker(c, 0.8) if trim_kind == 0 else look.accent
    if look.variant != "tank top" and look.pick(2):
        # Raglan sleeves in a second colour, the seam running from the neck to the armpit.
        raglan = look.accent if look.pattern == "solid" else _lighter(c, 0.7)
        right_sleeve = [(nw + 0.01, top + 0.005), *sleeve]
        for part in (right_sleeve, _mirror(right_sleeve)):
            pen.polygon(part, raglan, _darker(raglan))
    pen.line(neck, trim, 0.022)
    cuff_r = sleeve[1:] if look.variant == "tank top" else sleeve[1:3]
    pen.line(cuff_r, trim, 0.018)
    pen.line(_mirror(cuff_r), trim, 0.018)
    if trim_kind == 2:
        pen.line([(-bw - flare * 0.9, hem - 0.03), (bw + flare * 0.9, hem - 0.03)], trim, 0.03)
    if look.variant == "hoodie":
        # A kangaroo pocket, drawstrings and a ribbed hem band.
        pv = hem - rng.uniform(0.22, 0.3)
        pocket = [
            (-bw * 0.55, pv),
            (bw * 0.55, pv),
            (bw * 0.75, hem - 0.06),
            (-bw * 0.75, hem - 0.06),
        ]
        pen.polygon(pocket, None, _darker(c, 0.55), 0.008)
        for u in (-nw * 0.5, nw * 0.5):
            pen.line(
                [(u, top + depth * 0.8), (u * 1.2, top + depth + rng.uniform(0.1, 0.16))],
                (238, 238, 234) if sum(c) < 380 else (40, 40, 40),
                0.012,
            )
        pen.line(
            [(-bw - flare * 0.9, hem - 0.03), (bw + flare * 0.9, hem - 0.03)], _darker(c, 0.8), 0.05
        )
    elif look.pick(2, after=2):
        pocket_c = look.accent if rng.random() < 0.5 else _darker(c, 0.85)
        pen.polygon(_rect(-0.2, -0.24, -0.09, -0.1), pocket_c, _darker(pocket_c, 0.7))
    return (float(rng.choice([0.0, 0.11])), -0.16, float(rng.uniform(0.07, 0.26)))


def _draw_mug(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    if look.variant == "travel mug":
        # No handle, wider at the top, a lid and a grip sleeve.
        w, h = rng.uniform(0.28, 0.36), rng.uniform(0.62, 0.76)
        top, bottom = -h / 2 + 0.06, h / 2
        wb = w * rng.uniform(0.7, 0.85)
        body = [
            (-w / 2, top),
            (w / 2, top),
            (wb / 2, bottom - 0.02),
            *_arc(0.0, bottom - 0.02, wb / 2, 0.03, 0, 180, 10),
        ]
        pen.fabric_polygon(body, outline=edge)
        if look.pick(2):
            band = look.accent if look.pattern == "solid" else (40, 40, 42)
            g0 = top + h * rng.uniform(0.3, 0.45)
            g1 = g0 + h * rng.uniform(0.15, 0.25)
            k0, k1 = (g0 - top) / (bottom - top), (g1 - top) / (bottom - top)
            pen.polygon(
                [
                    (-w / 2 + (w - wb) / 2 * k0, g0),
                    (w / 2 - (w - wb) / 2 * k0, g0),
                    (w / 2 - (w - wb) / 2 * k1, g1),
                    (-w / 2 + (w - wb) / 2 * k1, g1),
                ],
                band,
                _darker(band),
            )
        pen.shade_cylinder(-w / 2, w / 2, top, bottom + 0.02)
        lid = _METALS[int(rng.integers(len(_METALS)))]
        lid_h = rng.uniform(0.06, 0.1)
        pen.draw.rounded_rectangle(
            pen.box(-w / 2 - 0.015, top - lid_h, w / 2 + 0.015, top + 0.01),
            pen.px(0.02),
            fill=(*lid, 255),
            outline=(*_darker(lid), 255),
            width=pen.px(0.006),
        )
        pen.polygon(
            _rect(w * 0.1, top - lid_h - 0.03, w * 0.3, top - lid_h + 0.005), lid, _darker(lid)
        )
        return (0.0, top + h * 0.3, w * 0.35)
    if look.variant == "espresso cup":
        w, h = rng.uniform(0.3, 0.4), rng.uniform(0.2, 0.28)
    elif look.variant == "tall mug":
        w, h = rng.uniform(0.26, 0.34), rng.uniform(0.52, 0.66)
    else:
        w, h = rng.uniform(0.36, 0.48), rng.uniform(0.38, 0.52)
    taper = rng.uniform(0.74, 0.86) if look.pick(2, after=6) else rng.uniform(0.94, 1.0)
    e = w * rng.uniform(0.16, 0.26)
    top, bottom = -h / 2, h / 2
    handle = look.pick(3)  # a round handle, a D-shaped one, or a round one on the left
    side = -1.0 if handle == 2 else 1.0
    if look.variant == "espresso cup":
        saucer = look.colour if look.pick(2, after=3) else (240, 240, 236)
        pen.ellipse(-w * 0.95, bottom - 0.05, w * 0.95, bottom + 0.06, saucer, _darker(saucer, 0.7))
    hw = rng.uniform(0.1, 0.17) * (0.7 if look.variant == "espresso cup" else 1.0)
    hh = h * rng.uniform(0.45, 0.75)
    hv0 = top + h * rng.uniform(0.08, 0.2)
    thick = rng.uniform(0.03, 0.05)
    hu0, hu1 = sorted((side * (w / 2 - 0.05), side * (w / 2 + hw)))
    if handle == 1:
        r = pen.px(0.05)
        pen.draw.rounded_rectangle(
            pen.box(hu0, hv0, hu1, hv0 + hh),
            r,
            fill=(*c, 255),
            outline=(*edge, 255),
            width=pen.px(0.006),
        )
        pen.draw.rounded_rectangle(
            pen.box(hu0 + thick, hv0 + thick, hu1 - thick, hv0 + hh - thick), r, fill=(0, 0, 0, 0)
        )
    else:
        pen.ellipse(hu0, hv0, hu1, hv0 + hh, c, edge)
        pen.clear_ellipse(hu0 + thick, hv0 + thick, hu1 - thick, hv0 + hh - thick)
    wb = w * taper
    body = [(-w / 2, top), (w / 2, top), *(_arc(0.0, bottom - e / 2, wb / 2, e / 2, 0, 180, 16))]
    pen.fabric_polygon(body, outline=edge)
    pen.shade_cylinder(-w / 2, w / 2, top, bottom + 0.01)
    inside = (236, 236, 232) if look.pick(2, after=3) else _darker(c, 0.7)
    pen.ellipse(
        -w / 2, top - e / 2, w / 2, top + e / 2, _darker(inside, 0.8), _lighter(c, 0.3), 0.012
    )
    pen.ellipse(
        -w / 2 + 0.02, top - e / 2 + 0.02, w / 2 - 0.02, top + e / 2 - 0.004, _darker(inside, 0.65)
    )
    return (0.0, top + h * 0.55, min(w, h) * 0.4)


def _draw_bottle(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    if look.variant == "glass bottle":
        w, nw, neck_len = rng.uniform(0.18, 0.26), rng.uniform(0.06, 0.08), rng.uniform(0.16, 0.24)
    elif look.variant == "flask":
        w, nw, neck_len = rng.uniform(0.24, 0.32), rng.uniform(0.16, 0.22), rng.uniform(0.0, 0.03)
    else:
        w, nw, neck_len = rng.uniform(0.2, 0.28), rng.uniform(0.1, 0.14), rng.uniform(0.03, 0.07)
    bottom = 0.44
    cap_h = rng.uniform(0.07, 0.12)
    top = -0.44 + cap_h
    shoulder = top + neck_len + rng.uniform(0.08, 0.18)
    neck_base = top + neck_len
    r = 0.03
    left = [
        (-nw / 2, top),
        (-nw / 2, neck_base),
        (-w / 2, shoulder - (shoulder - neck_base) * 0.1),
        (-w / 2, shoulder),
        (-w / 2, bottom - r),
        (-w / 2 + r, bottom),
    ]
    if look.variant == "sports bottle":
        # An hourglass grip in the middle of the body.
        waist = (shoulder + bottom) / 2
        left = [
            *left[:4],
            (-w / 2, waist - 0.12),
            (-w * 0.36, waist),
            (-w / 2, waist + 0.12),
            *left[4:],
        ]
    body = _chaikin(left + _mirror(left), 2) if look.variant != "flask" else left + _mirror(left)
    pen.fabric_polygon(body, outline=edge)
    pen.shade_cylinder(-w / 2, w / 2, top, bottom + 0.01)
    if look.variant == "glass bottle" or look.pick(2):
        label = (242, 238, 226) if look.pattern != "solid" else look.accent
        lv0 = shoulder + rng.uniform(0.05, 0.12)
        lv1 = lv0 + rng.uniform(0.16, 0.3)
        pen.polygon(
            [(-w / 2, lv0), (w / 2, lv0), (w / 2, lv1), (-w / 2, lv1)], label, _darker(label, 0.8)
        )
    cap = (_METALS[int(rng.integers(len(_METALS)))], look.accent, (30, 30, 32))[look.pick(3, 2)]
    cw = nw * rng.uniform(1.05, 1.4)
    pen.polygon(
        [
            (-cw / 2, top - cap_h),
            (cw / 2, top - cap_h),
            (cw / 2, top + 0.01),
            (-cw / 2, top + 0.01),
        ],
        cap,
        _darker(cap, 0.6),
    )
    if look.variant == "sports bottle":
        pen.polygon(
            _rect(-cw * 0.15, top - cap_h - 0.06, cw * 0.15, top - cap_h + 0.01),
            _darker(cap, 0.85),
            _darker(cap, 0.6),
        )
    if look.variant == "water bottle":
        pen.ellipse(
            -cw * 0.35,
            top - cap_h - 0.08,
            cw * 0.35,
            top - cap_h + 0.02,
            None,
            _darker(cap, 0.8),
            0.018,
        )
    for k in range(3):
        v = top - cap_h + cap_h * (k + 1) / 4
        pen.line([(-cw / 2, v), (cw / 2, v)], _darker(cap, 0.75), 0.004)
    return (0.0, (shoulder + bottom) / 2, w * 0.45)


def _draw_sneaker(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    f = 1.0 if look.pick(2, after=6) else -1.0  # toe to the right or to the left
    if look.pick(2):
        # Shops often show the pair: the far shoe a little behind and above the near one.
        cx, cy, s = pen.cx, pen.cy, pen.s
        pen.s = s * 0.82
        pen.cx, pen.cy = cx + f * 0.09 * s, cy - 0.1 * s
        _one_shoe(pen, look, np.random.default_rng(look.draw_seed + 2), f, shade=0.8)
        pen.cx, pen.cy = cx - f * 0.05 * s, cy + 0.07 * s
        spot = _one_shoe(pen, look, np.random.default_rng(look.draw_seed + 2), f, shade=1.0)
        pen.cx, pen.cy, pen.s = cx, cy, s
        u, v, size = spot
        return (u * 0.82 - f * 0.05, v * 0.82 + 0.07, size * 0.82)
    return _one_shoe(pen, look, rng, f, shade=1.0)


def _one_shoe(pen: _Pen, look: _Look, rng: np.random.Generator, f: float, shade: float) -> LogoSpot:
    c = _darker(look.colour, shade)
    edge = _darker(c)
    soles = (*_SOLES, look.accent, _darker(look.colour, 0.7))
    sole_c = _darker(soles[int(rng.integers(len(soles)))], shade)
    boot = look.variant == "ankle boot"
    t = rng.uniform(0.04, 0.06) if boot else rng.uniform(0.05, 0.1)
    if look.variant == "runner":
        t = rng.uniform(0.09, 0.13)
    base = 0.16
    hi = {
        "high-top": rng.uniform(0.14, 0.22),
        "ankle boot": rng.uniform(0.2, 0.28),
        "runner": rng.uniform(-0.02, 0.02),
    }.get(look.variant, rng.uniform(0.0, 0.04))
    toe = rng.uniform(0.0, 0.05)
    if boot:
        upper = [
            (-0.42, base - t),
            (-0.44, -0.05),
            (-0.4, -0.2 - hi),
            (-0.18, -0.2 - hi),
            (-0.14, -0.05),
            (0.1, -0.03 - toe),
            (0.34, 0.02 - toe),
            (0.46, 0.1),
            (0.45, base - t),
        ]
    else:
        upper = [
            (-0.45, base - t),
            (-0.47, 0.0),
            (-0.43, -0.14 - hi),
            (-0.3, -0.1 - hi * 0.8),
            (-0.18, -0.16 - hi),
            (-0.12, -0.23 - hi),
            (-0.07, -0.17 - hi * 0.9),
            (0.15, -0.06 - toe),
            (0.32, 0.0 - toe),
            (0.46, 0.07),
            (0.46, base - t),
        ]
    upper = _chaikin([(u * f, v) for u, v in upper], 2)
    pen.fabric_polygon(upper, outline=edge)
    if boot:
        # Elastic side panel and a heel block: a Chelsea boot, not a trainer.
        pen.polygon(
            _chaikin(
                [
                    (-0.3 * f, -0.2 - hi),
                    (-0.2 * f, -0.2 - hi),
                    (-0.22 * f, -0.02),
                    (-0.28 * f, -0.02),
                ],
                1,
            ),
            _darker(c, 0.55),
        )
        pen.polygon(
            [
                (-0.42 * f, base - t),
                (-0.2 * f, base - t),
                (-0.22 * f, base + 0.04),
                (-0.41 * f, base + 0.04),
            ],
            _darker(sole_c, 0.8),
        )
        pen.line(
            [
                (-0.4 * f, -0.2 - hi),
                (-0.43 * f, -0.27 - hi),
                (-0.36 * f, -0.27 - hi),
                (-0.36 * f, -0.2 - hi),
            ],
            _darker(c, 0.7),
            0.014,
        )
    else:
        cap_c = look.accent if rng.random() < 0.5 else _lighter(c, 0.25)
        pen.polygon(
            _chaikin(
                [
                    (0.3 * f, 0.01 - toe),
                    (0.46 * f, 0.07),
                    (0.46 * f, base - t),
                    (0.26 * f, base - t),
                ],
                2,
            ),
            cap_c,
            _darker(cap_c),
        )
        eyestay = _darker(c, 0.7)
        pen.line([(-0.11 * f, -0.19 - hi * 0.9), (0.16 * f, -0.05 - toe)], eyestay, 0.06)
        lace = (240, 240, 236) if rng.random() < 0.6 else look.accent
        for k in range(int(rng.integers(4, 7))):
            a = k / 5.5
            u, v = (-0.1 + 0.25 * a) * f, -0.19 - hi * 0.9 * (1 - a) + (0.13 - toe) * a
            pen.line([(u - 0.04 * f, v - 0.03), (u + 0.04 * f, v + 0.03)], lace, 0.016)
        stripe = look.accent if look.pattern == "solid" else (240, 240, 236)
        kind = look.pick(3, after=2)
        if kind == 0:
            pen.line([(-0.32 * f, 0.1), (-0.1 * f, 0.04), (0.14 * f, -0.02)], stripe, 0.035)
        elif kind == 1:
            for k in range(3):
                u = (-0.2 + k * 0.07) * f
                pen.line([(u, -0.07 - hi * 0.5), (u + 0.06 * f, base - t - 0.02)], stripe, 0.024)
        pen.polygon(
            [(-0.47 * f, 0.0), (-0.43 * f, -0.14 - hi), (-0.36 * f, -0.12 - hi), (-0.4 * f, 0.02)],
            look.accent,
        )
    sole = [
        (-0.47, base - t - 0.01),
        (0.46, base - t - 0.01),
        (0.5, base - t - 0.05),
        (0.49, base),
        (-0.46, base + 0.005),
    ]
    if boot:
        sole = [
            (-0.2, base - t - 0.01),
            (0.46, base - t - 0.01),
            (0.49, base - t - 0.03),
            (0.48, base),
            (-0.2, base + 0.005),
        ]
    pen.polygon(_chaikin([(u * f, v) for u, v in sole], 2), sole_c, _darker(sole_c, 0.7))
    if look.variant == "runner":
        pen.line([(-0.44 * f, base - t * 0.55), (0.44 * f, base - t * 0.45)], look.accent, 0.02)
    return (-0.3 * f, -0.02, 0.08)


def _draw_lamp(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    # Lamps are mostly air, so the image model sees their structure more than their colour:
    # shade, stem and base are chosen independently to give many distinct silhouettes.
    frame = (*_METALS, *_WOODS[:2], c)[int(rng.integers(len(_METALS) + 3))]
    if look.variant == "desk lamp":
        return _draw_desk_lamp(pen, look, rng, frame)
    bottom = 0.46
    floor = look.variant == "floor lamp"
    if floor:
        bw, sh, top = rng.uniform(0.24, 0.4), rng.uniform(0.16, 0.26), -0.47
    else:
        bw, sh, top = rng.uniform(0.38, 0.58), rng.uniform(0.22, 0.34), -0.4
    shade_bottom = top + sh
    base_w = rng.uniform(0.18, 0.34)
    base_kind = look.pick(4)
    base_top = bottom - {0: 0.03, 3: 0.04}.get(base_kind, float(rng.uniform(0.1, 0.22)))
    stem_w = rng.uniform(0.02, 0.045)
    if floor and rng.random() < 0.35:  # an arc lamp: the stem curves over to the shade
        reach = rng.uniform(0.16, 0.3) * (1.0 if rng.random() < 0.5 else -1.0)
        stem = _bezier((-reach, base_top), (-reach * 1.2, top - 0.1), (0.0, top + 0.02), 16)
        pen.line(stem, frame, stem_w)
        base_shift = -reach
    else:
        pen.line([(0.0, shade_bottom - 0.02), (0.0, base_top + 0.01)], frame, stem_w)
        base_shift = 0.0
    b0, b1 = base_shift - base_w / 2, base_shift + base_w / 2
    if base_kind == 0:  # a flat disc
        pen.ellipse(b0, bottom - 0.05, b1, bottom + 0.01, frame, _darker(frame))
    elif base_kind == 1:  # a cone
        pen.polygon(
            [
                (b0, bottom),
                (b1, bottom),
                (base_shift + base_w * 0.15, base_top),
                (base_shift - base_w * 0.15, base_top),
            ],
            frame,
            _darker(frame),
        )
    elif base_kind == 2:  # a ceramic vase in the product's own fabric
        pen.fabric_ellipse(b0, base_top, b1, bottom, outline=edge)
        pen.shade_cylinder(b0, b1, base_top, bottom)
    else:  # a tripod
        for s0 in (-1.0, 0.0, 1.0):
            pen.line(
                [(base_shift, base_top - 0.12), (base_shift + s0 * base_w * 0.7, bottom)],
                frame,
                stem_w * 0.8,
            )
    shape = (
        "dome"
        if look.variant == "dome lamp"
        else ("drum", "empire", "cone", "bell", "globe")[
            (2 * look.pick(3, after=4) + int(rng.integers(2))) % 5
        ]
    )
    glow = (255, 238, 188)
    if shape == "dome":
        pen.fabric_polygon(_arc(0.0, shade_bottom, bw / 2, sh * 1.1, 180, 360, 24), outline=edge)
        pen.ellipse(-bw / 2, shade_bottom - 0.02, bw / 2, shade_bottom + 0.04, glow, _darker(c))
    elif shape == "globe":
        r = sh * 0.7
        pen.fabric_ellipse(-r, shade_bottom - 2 * r + 0.04, r, shade_bottom + 0.04, outline=edge)
    else:
        tw = bw * {"drum": 0.95, "empire": 0.6, "cone": 0.3, "bell": 0.55}[shape]
        if shape == "bell":
            side = _bezier((tw / 2, top), (tw / 2, shade_bottom), (bw / 2, shade_bottom), 10)
        else:
            side = [(tw / 2, top), (bw / 2, shade_bottom)]
        pen.ellipse(-bw / 2 + 0.02, shade_bottom - 0.02, bw / 2 - 0.02, shade_bottom + 0.03, glow)
        pen.fabric_polygon(
            [*_mirror(side), *side, *_arc(0.0, shade_bottom, bw / 2, 0.025, 0, 180, 12)],
            outline=edge,
        )
    pen.shade_cylinder(-bw / 2, bw / 2, top - 0.05, shade_bottom + 0.04)
    return (0.0, (top + shade_bottom) / 2 + 0.02, sh * 0.35)


def _draw_desk_lamp(pen: _Pen, look: _Look, rng: np.random.Generator, frame: RGB) -> LogoSpot:
    """An architect's lamp: weighted base, two arm segments, a head facing down."""
    c = look.colour
    edge = _darker(c)
    f = 1.0 if rng.random() < 0.5 else -1.0
    bw = rng.uniform(0.24, 0.36)
    head_kind = look.pick(3, after=4)  # a cone, a wide box-like shade, a dome
    foot = (-0.18 * f, 0.41)
    elbow = (rng.uniform(-0.36, -0.02) * f, rng.uniform(-0.16, 0.08))
    head = (rng.uniform(0.0, 0.24) * f, rng.uniform(-0.42, -0.24))
    if look.pick(2):
        pen.fabric_rounded(foot[0] - bw / 2, 0.39, foot[0] + bw / 2, 0.47, 0.03, outline=edge)
    else:
        pen.fabric_ellipse(foot[0] - bw / 2, 0.38, foot[0] + bw / 2, 0.48, outline=edge)
    arm = rng.uniform(0.025, 0.045)
    pen.line([foot, elbow, head], frame, arm)
    if look.pick(2, after=2):  # the parallel bar and springs of a balanced-arm lamp
        pen.line(
            [(foot[0] + 0.05, foot[1]), (elbow[0] + 0.05, elbow[1]), (head[0] + 0.04, head[1])],
            frame,
            arm * 0.6,
        )
        for a, b in ((foot, elbow), (elbow, head)):
            mid = ((a[0] + b[0]) / 2 + 0.025, (a[1] + b[1]) / 2)
            pen.line([(mid[0], mid[1] - 0.06), (mid[0], mid[1] + 0.06)], (150, 150, 150), 0.018)
    for u, v in (foot, elbow, head):
        pen.ellipse(u - 0.03, v - 0.03, u + 0.03, v + 0.03, _darker(frame, 0.8))
    angle = math.radians(rng.uniform(10, 60)) * f
    d = (math.sin(angle), math.cos(angle))  # where the light points: down and outwards
    n = (d[1], -d[0])
    hl, hw = rng.uniform(0.22, 0.32), rng.uniform(0.18, 0.28)
    m = (head[0] + d[0] * hl, head[1] + d[1] * hl)
    neck = (0.035, hw * 0.45, hw * 0.3)[head_kind]
    cone = [
        (head[0] - n[0] * neck, head[1] - n[1] * neck),
        (head[0] + n[0] * neck, head[1] + n[1] * neck),
        (m[0] + n[0] * hw / 2, m[1] + n[1] * hw / 2),
        (m[0] - n[0] * hw / 2, m[1] - n[1] * hw / 2),
    ]
    pen.fabric_polygon(cone, outline=edge)
    if head_kind == 2:  # a round housing behind the shade
        pen.fabric_ellipse(
            head[0] - 0.08, head[1] - 0.08, head[0] + 0.08, head[1] + 0.08, outline=edge
        )
    pen.line([cone[2], cone[3]], (255, 236, 186), 0.03)
    return ((head[0] + m[0]) / 2, (head[1] + m[1]) / 2, 0.06)


def _draw_backpack(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    strap = _darker(c, 0.5) if look.pick(2) else (34, 34, 36)
    if look.variant == "hiking pack":
        # Tall and narrow: a top lid, compression straps, a sleeping mat strapped underneath.
        w, h = rng.uniform(0.32, 0.42), rng.uniform(0.7, 0.84)
        top, bottom = -h / 2, h / 2 - 0.06
        pen.fabric_rounded(-w / 2, top + 0.06, w / 2, bottom, 0.08, outline=edge)
        pen.fabric_rounded(
            -w / 2 - 0.02, top, w / 2 + 0.02, top + rng.uniform(0.12, 0.18), 0.05, outline=edge
        )
        for k in range(int(rng.integers(2, 4))):
            v = top + 0.26 + k * rng.uniform(0.12, 0.16)
            pen.line([(-w / 2 - 0.01, v), (w / 2 + 0.01, v)], strap, 0.02)
        mat = look.accent
        mw = w + rng.uniform(0.08, 0.16)
        pen.draw.rounded_rectangle(
            pen.box(-mw / 2, bottom - 0.03, mw / 2, bottom + 0.09),
            pen.px(0.06),
            fill=(*mat, 255),
            outline=(*_darker(mat), 255),
            width=pen.px(0.006),
        )
        for u in (-w / 4, w / 4):
            pen.line([(u, bottom - 0.04), (u, bottom + 0.1)], strap, 0.018)
        return (0.0, top + 0.07, 0.06)
    w, h = rng.uniform(0.44, 0.6), rng.uniform(0.62, 0.8)
    top, bottom = -h / 2 + 0.02, h / 2 + 0.02
    for s in (-1.0, 1.0):
        pen.polygon(
            _chaikin(
                [
                    (s * (w / 2 - 0.06), top + 0.1),
                    (s * (w / 2 + 0.06), top + h * 0.45),
                    (s * (w / 2 + 0.02), bottom - 0.08),
                    (s * (w / 2 - 0.04), bottom - 0.1),
                    (s * (w / 2 - 0.02), top + h * 0.45),
                ],
                2,
            ),
            strap,
        )
    pen.line(
        _arc(0.0, top + 0.01, rng.uniform(0.06, 0.1), rng.uniform(0.05, 0.08), 180, 360, 12),
        strap,
        0.022,
    )
    radius = w * rng.uniform(0.25, 0.45)
    if look.variant == "rolltop":
        if look.pick(2, after=6):  # side pockets peeking out
            for s0 in (-1.0, 1.0):
                u0, u1 = sorted((s0 * (w / 2 - 0.02), s0 * (w / 2 + 0.06)))
                pen.draw.rounded_rectangle(
                    pen.box(u0, bottom - h * 0.4, u1, bottom - 0.02),
                    pen.px(0.03),
                    fill=(*_darker(c, 0.7), 255),
                )
        pen.fabric_rounded(-w / 2, top + 0.04, w / 2, bottom, 0.06, outline=edge)
        roll = rng.uniform(0.08, 0.16)
        pen.fabric_rounded(-w / 2 - 0.01, top - 0.02, w / 2 + 0.01, top + roll, 0.05, outline=edge)
        # One buckled strap down the middle, or two near the sides.
        strap_us = (0.0,) if rng.random() < 0.5 else (-w / 4, w / 4)
        reach = h * rng.uniform(0.3, 0.55)
        for u in strap_us:
            pen.polygon(_rect(u - 0.03, top - 0.03, u + 0.03, top + reach), strap)
            pen.polygon(
                _rect(u - 0.045, top + reach - 0.05, u + 0.045, top + reach + 0.02), (30, 30, 30)
            )
    else:
        pen.fabric_rounded(-w / 2, top, w / 2, bottom, radius, outline=edge)
        pen.draw.rounded_rectangle(
            pen.box(-w / 2 + 0.04, top + 0.04, w / 2 - 0.04, bottom - 0.1),
            pen.px(radius * 0.8),
            outline=(*_darker(c, 0.45), 255),
            width=pen.px(0.008),
        )
    pocket = (look.accent, _darker(c, 0.8), (36, 36, 38))[look.pick(3, after=2)]
    pv0 = bottom - h * rng.uniform(0.3, 0.45)
    if look.variant == "school bag":
        for s in (-1.0, 1.0):
            u0, u1 = sorted((s * 0.02, s * (w / 2 - 0.05)))
            pen.draw.rounded_rectangle(
                pen.box(u0, pv0, u1, bottom - 0.03),
                pen.px(0.04),
                fill=(*pocket, 255),
                outline=(*_darker(pocket), 255),
                width=pen.px(0.006),
            )
    else:
        pw = w * rng.uniform(0.6, 0.8)
        pen.draw.rounded_rectangle(
            pen.box(-pw / 2, pv0, pw / 2, bottom - 0.03),
            pen.px(0.06),
            fill=(*pocket, 255),
            outline=(*_darker(pocket), 255),
            width=pen.px(0.006),
        )
        pen.line(
            [(-pw / 2 + 0.03, pv0 + 0.03), (pw / 2 - 0.03, pv0 + 0.03)], _darker(pocket, 0.5), 0.006
        )
        pen.polygon(
            [
                (pw / 2 - 0.08, pv0 + 0.02),
                (pw / 2 - 0.06, pv0 + 0.02),
                (pw / 2 - 0.06, pv0 + 0.08),
                (pw / 2 - 0.08, pv0 + 0.08),
            ],
            (40, 40, 40),
        )
    return (0.0, (pv0 + bottom) / 2, 0.07)


def _draw_hat(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    if look.variant == "cap":
        f = 1.0 if look.pick(2, after=2) else -1.0
        cw, ch = rng.uniform(0.5, 0.6), rng.uniform(0.3, 0.4)
        base = 0.1
        brim_c = (c, look.accent, (30, 30, 32))[look.pick(3, after=4)]
        reach = rng.uniform(0.2, 0.3)
        brim = [
            (cw / 2 - 0.08, base - 0.03),
            (cw / 2 + reach, base + 0.02),
            (cw / 2 + reach + 0.02, base + 0.07),
            (cw / 2 - 0.04, base + 0.05),
        ]
        brim = [(u * f - 0.1 * f, v) for u, v in brim]
        pen.polygon(_chaikin(brim, 2), brim_c, _darker(brim_c))
        dome = _arc(-0.1 * f, base, cw / 2, ch, 180, 360, 24)
        pen.fabric_polygon(dome, outline=edge)
        for k in (-0.5, 0.2):
            pen.line(
                _arc(-0.1 * f + k * cw / 2 * f, base, cw * 0.12, ch, 270, 270 + 80 * f, 8),
                edge,
                0.005,
            )
        pen.ellipse(
            -0.1 * f - 0.025, base - ch - 0.02, -0.1 * f + 0.025, base - ch + 0.015, _darker(c, 0.8)
        )
        return (0.02 * f, base - ch * 0.5, 0.1)
    elif look.variant == "beanie":
        w, h = rng.uniform(0.44, 0.54), rng.uniform(0.4, 0.5)
        base = 0.26
        cuff = rng.uniform(0.1, 0.15)
        pen.fabric_polygon(
            _arc(0.0, base - cuff, w / 2, h - cuff, 180, 360, 24)
            + [(w / 2, base - cuff + 0.01), (-w / 2, base - cuff + 0.01)],
            outline=edge,
        )
        cuff_c = (_darker(c, 0.85), look.accent, (240, 240, 236))[look.pick(3, after=4)]
        pen.polygon(
            [
                (-w / 2 - 0.01, base - cuff),
                (w / 2 + 0.01, base - cuff),
                (w / 2 + 0.01, base),
                (-w / 2 - 0.01, base),
            ],
            cuff_c,
            _darker(cuff_c),
        )
        for k in range(1, 14):
            u = -w / 2 + w * k / 14
            pen.line([(u, base - cuff + 0.01), (u, base - 0.01)], _darker(cuff_c, 0.8), 0.004)
        if look.pick(2):
            r = rng.uniform(0.07, 0.1)
            pen.ellipse(
                -r, base - h - r * 1.4, r, base - h + r * 0.6, look.accent, _darker(look.accent)
            )
        return (0.0, base - cuff / 2, 0.06)
    elif look.variant == "sun hat":
        # A wide floppy brim seen from slightly above, a low crown and a ribbon; or a narrower
        # brim with a tall, flat-topped crown (a boater).
        boater = look.pick(2, after=2)
        bw, bh = rng.uniform(0.8, 0.96), rng.uniform(0.2, 0.3)
        if look.pick(2):
            bw, bh = bw * 0.75, bh * 0.7
        cw, ch = rng.uniform(0.34, 0.42), rng.uniform(0.2, 0.28)
        base = 0.08
        pen.fabric_ellipse(-bw / 2, base - bh / 2, bw / 2, base + bh / 2, outline=edge)
        pen.ellipse(-cw / 2, base - bh * 0.2, cw / 2, base + bh * 0.22, _darker(c, 0.75))
        if boater:
            crown = [
                (-cw / 2, base),
                (-cw / 2 + 0.02, base - ch),
                (cw / 2 - 0.02, base - ch),
                (cw / 2, base),
                *_arc(0.0, base, cw / 2, 0.04, 0, 180, 8),
            ]
        else:
            crown = [
                *_arc(0.0, base, cw / 2, ch, 180, 360, 20),
                *_arc(0.0, base, cw / 2, 0.04, 0, 180, 8),
            ]
        pen.fabric_polygon(crown, outline=edge)
        ribbon = (look.accent, (30, 30, 30), _darker(c, 0.6))[look.pick(3, after=4)]
        pen.polygon(
            [
                *_arc(0.0, base - 0.05, cw / 2 - 0.004, 0.04, 0, 180, 8),
                *_arc(0.0, base, cw / 2, 0.04, 180, 0, 8),
            ],
            ribbon,
        )
        return (0.0, base - ch * 0.6, 0.06)
    else:
        tw, bw, h = rng.uniform(0.26, 0.34), rng.uniform(0.36, 0.44), rng.uniform(0.22, 0.3)
        base = 0.1
        droop = rng.uniform(0.06, 0.12)
        brim_w = bw + rng.uniform(0.2, 0.3)
        pen.fabric_polygon(
            _chaikin(
                [
                    (-bw / 2, base - 0.02),
                    (bw / 2, base - 0.02),
                    (brim_w / 2, base + droop),
                    (-brim_w / 2, base + droop),
                ],
                2,
            ),
            outline=edge,
        )
        pen.fabric_polygon(
            _chaikin([(-tw / 2, base - h), (tw / 2, base - h), (bw / 2, base), (-bw / 2, base)], 1),
            outline=edge,
        )
        band = (look.accent, _darker(c, 0.7), (30, 30, 30))[look.pick(3, after=4)]
        pen.polygon(
            [
                (-bw / 2 + 0.005, base - 0.06),
                (bw / 2 - 0.005, base - 0.06),
                (bw / 2, base - 0.01),
                (-bw / 2, base - 0.01),
            ],
            band,
        )
        return (0.0, base - h * 0.6, 0.07)


def _draw_chair(pen: _Pen, look: _Look, rng: np.random.Generator) -> LogoSpot:
    c = look.colour
    edge = _darker(c)
    wood = _WOODS[int(rng.integers(len(_WOODS)))]
    wood_edge = _darker(wood, 0.7)
    leg = rng.uniform(0.025, 0.04)
    f = 1.0 if rng.random() < 0.5 else -1.0  # the back on the left or on the right
    depth_u, depth_v = 0.06 * f, -0.04  # the far legs, drawn first, a little up and aside

    def slab(u0: float, v0: float, u1: float, v1: float) -> list[Point]:
        return [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]

    if look.variant == "office chair":
        # A swivel chair: five-star base on castors, gas lift, padded seat and back.
        black = (36, 36, 38) if look.pick(2, after=2) else (190, 192, 196)
        seat_v = rng.uniform(0.02, 0.1)
        sw, back_h = rng.uniform(0.38, 0.5), rng.uniform(0.36, 0.5)
        for du in (-0.3, -0.12, 0.12, 0.3):
            pen.line([(0.0, 0.36), (du, 0.41 if abs(du) > 0.2 else 0.38)], black, 0.03)
            u, v = du, (0.41 if abs(du) > 0.2 else 0.38) + 0.03
            pen.ellipse(u - 0.025, v - 0.025, u + 0.025, v + 0.025, black)
        pen.line([(0.0, seat_v + 0.05), (0.0, 0.37)], (160, 162, 166), 0.035)
        pen.line([(0.0, seat_v), (0.0, seat_v - 0.12)], black, 0.05)
        back = look.pick(3, after=4)  # a padded back, a framed mesh back, a low back
        if back == 2:
            back_h *= 0.55
        b0, b1 = seat_v - 0.1 - back_h, seat_v - 0.1
        if back == 1:
            pen.draw.rounded_rectangle(
                pen.box(-sw / 2, b0 - 0.02, sw / 2, b1 + 0.02), pen.px(0.1), fill=(*black, 255)
            )
        pen.fabric_rounded(-sw / 2 + 0.02, b0, sw / 2 - 0.02, b1, 0.08, outline=edge)
        if back == 0 and rng.random() < 0.5:  # a headrest
            pen.fabric_rounded(-sw / 4, b0 - 0.12, sw / 4, b0 - 0.03, 0.04, outline=edge)
            pen.line([(0.0, b0 - 0.03), (0.0, b0)], black, 0.03)
        pen.fabric_rounded(-sw / 2, seat_v - 0.03, sw / 2, seat_v + 0.06, 0.03, outline=edge)
        if look.pick(2):
            for s in (-1.0, 1.0):
                pen.line(
                    [
                        (s * sw / 2, seat_v),
                        (s * (sw / 2 + 0.02), seat_v - 0.14),
                        (s * (sw / 2 - 0.08), seat_v - 0.14),
                    ],
                    black,
                    0.025,
                )
        return (0.0, seat_v - 0.1 - back_h * 0.75, 0.06)
    if look.variant == "bar stool":
        # Stools are mostly legs and air: vary the frame's style and colour, not just the seat.
        frames = (*_WOODS, *_METALS, look.accent, look.colour)
        frame = frames[int(rng.integers(len(frames)))]
        back = look.pick(3, after=4)
        seat_v = rng.uniform(-0.02, 0.06) if back else rng.uniform(-0.2, -0.05)
        sw = rng.uniform(0.34, 0.5)
        leg = rng.uniform(0.03, 0.05)
        legs = look.pick(4)
        if legs == 0:  # a gas-lift pedestal on a disc, with a foot ring
            pen.line([(0.0, seat_v), (0.0, 0.44)], frame, leg * 1.4)
            pen.ellipse(-0.18, 0.42, 0.18, 0.48, frame, _darker(frame))
            pen.ellipse(-0.14, 0.12, 0.14, 0.18, None, frame, 0.02)
        elif legs == 1:  # crossed legs, an X from the side
            for s0 in (-1.0, 1.0):
                pen.line([(s0 * sw / 2, seat_v), (-s0 * (sw / 2 + 0.04), 0.46)], frame, leg)
        elif legs == 2:  # a sled frame: one bent tube per side
            sled = [
                (-sw / 2 + 0.04, seat_v),
                (-sw / 2 - 0.02, 0.45),
                (sw / 2 + 0.02, 0.45),
                (sw / 2 - 0.04, seat_v),
            ]
            pen.line(sled, frame, leg * 0.8)
        else:
            for du, dv, shade in ((depth_u, depth_v, 0.7), (0.0, 0.0, 1.0)):
                col = _darker(frame, shade)
                for s0 in (-1.0, 1.0):
                    pen.line(
                        [
                            (s0 * (sw / 2 - 0.05) + du, seat_v + dv),
                            (s0 * (sw / 2 + 0.03) + du, 0.46 + dv),
                        ],
                        col,
                        leg,
                    )
            ring_v = rng.uniform(0.15, 0.3)
            pen.line([(-sw / 2 - 0.01, ring_v), (sw / 2 + 0.01, ring_v)], frame, leg * 0.8)
        thick = rng.uniform(0.05, 0.12)
        pen.fabric_rounded(
            -sw / 2 - 0.03,
            seat_v - thick,
            sw / 2 + 0.03,
            seat_v + 0.02,
            float(rng.uniform(0.01, 0.05)),
            outline=edge,
        )
        if back:
            bh = 0.08 if back == 1 else rng.uniform(0.12, 0.18)
            bv = seat_v - thick - rng.uniform(0.08, 0.14)
            for s0 in (-1.0, 1.0):
                pen.line([(s0 * sw * 0.35, bv), (s0 * sw * 0.35, seat_v - thick)], frame, leg * 0.8)
            pen.fabric_rounded(-sw / 2, bv - bh, sw / 2, bv, 0.03, outline=edge)
        return (0.0, seat_v - thick / 2, 0.05)
    if look.variant == "armchair":
        w, seat_v = rng.uniform(0.6, 0.74), rng.uniform(0.08, 0.16)
        back_h = rng.uniform(0.45, 0.6)
        arms, base, wing = look.pick(3), look.pick(2, after=3), look.pick(2, after=6)
        if base:  # a skirt down to the floor instead of legs
            pen.fabric_rounded(-w / 2 + 0.04, seat_v + 0.1, w / 2 - 0.04, 0.44, 0.02, outline=edge)
        else:
            legs_c = (_darker(wood, 0.9), (30, 30, 32), (184, 150, 78))[int(rng.integers(3))]
            for s0 in (-1.0, 1.0):
                pen.line(
                    [(s0 * (w / 2 - 0.06), seat_v + 0.1), (s0 * (w / 2 - 0.02), 0.44)], legs_c, leg
                )
        if wing:  # a wingback: the back's top corners flare out
            pen.fabric_polygon(
                _chaikin(
                    [
                        (-w / 2 + 0.02, seat_v - back_h * 0.5),
                        (-w / 2 + 0.06, seat_v - back_h - 0.02),
                        (w / 2 - 0.06, seat_v - back_h - 0.02),
                        (w / 2 - 0.02, seat_v - back_h * 0.5),
                        (w / 2 - 0.08, seat_v),
                        (-w / 2 + 0.08, seat_v),
                    ],
                    2,
                ),
                outline=edge,
            )
        else:
            pen.fabric_rounded(
                -w / 2 + 0.08, seat_v - back_h, w / 2 - 0.08, seat_v + 0.02, 0.1, outline=edge
            )
        pen.fabric_rounded(
            -w / 2 + 0.06, seat_v - 0.04, w / 2 - 0.06, seat_v + 0.14, 0.04, outline=edge
        )
        if arms < 2:  # rolled or square arms; the third form is armless
            arm_h = rng.uniform(0.18, 0.28)
            for s0 in (-1.0, 1.0):
                u0, u1 = sorted((s0 * (w / 2), s0 * (w / 2 - 0.13)))
                pen.fabric_rounded(
                    u0, seat_v - arm_h, u1, seat_v + 0.16, 0.06 if arms else 0.015, outline=edge
                )
        return (0.0, seat_v - back_h * 0.6, 0.06)
    # A dining chair seen from the front and a little to the side: the seat is a parallelogram,
    # the far legs are shorter and darker, the backrest rises from the far edge.
    if look.pick(2, after=3):  # painted or metal frames as often as plain wood
        wood = (*_METALS, look.accent, _darker(c, 0.8))[int(rng.integers(len(_METALS) + 2))]
        wood_edge = _darker(wood, 0.7)
    sw = rng.uniform(0.4, 0.52)
    seat_v = rng.uniform(0.02, 0.1)
    du, dv = 0.07 * f, -0.1
    back_top = seat_v + dv - rng.uniform(0.36, 0.48)
    far = _darker(wood, 0.72)
    for s0 in (-1.0, 1.0):
        pen.line([(s0 * sw / 2 + du, seat_v + dv), (s0 * sw / 2 + du, 0.4)], far, leg)
    pen.line([(-sw / 2 + du, 0.3), (sw / 2 + du, 0.3)], far, leg * 0.6)
    for s0 in (-1.0, 1.0):
        pen.line([(s0 * sw / 2 + du, seat_v + dv), (s0 * sw / 2 + du, back_top)], wood, leg)
    style = look.pick(3)
    if style == 0:  # an upholstered back panel
        pen.fabric_rounded(
            -sw / 2 + du,
            back_top,
            sw / 2 + du,
            back_top + rng.uniform(0.16, 0.26),
            0.03,
            outline=edge,
        )
    elif style == 1:  # vertical slats under a top rail
        slats = int(rng.integers(3, 6))
        for k in range(slats):
            u = -sw / 2 + du + sw * (k + 1) / (slats + 1)
            pen.line([(u, back_top), (u, seat_v + dv)], wood, leg * 0.7)
        pen.fabric_rounded(
            -sw / 2 + du, back_top - 0.01, sw / 2 + du, back_top + 0.08, 0.02, outline=edge
        )
    else:  # a ladder back, its rails painted like the seat
        for k in range(int(rng.integers(2, 4))):
            v = back_top + 0.02 + k * 0.1
            pen.fabric_polygon(_rect(-sw / 2 + du, v - 0.025, sw / 2 + du, v + 0.025), outline=edge)
    seat = [
        (-sw / 2, seat_v),
        (sw / 2, seat_v),
        (sw / 2 + du, seat_v + dv),
        (-sw / 2 + du, seat_v + dv),
    ]
    pen.fabric_polygon(seat, outline=edge)
    cushion = rng.uniform(0.04, 0.09)  # the seat's front face: a thin board or a thick cushion
    if cushion > 0.06:
        pen.fabric_polygon(slab(-sw / 2, seat_v, sw / 2, seat_v + cushion), outline=edge)
    else:
        pen.polygon(slab(-sw / 2, seat_v, sw / 2, seat_v + cushion), wood, wood_edge)
    for s0 in (-1.0, 1.0):
        pen.line(
            [(s0 * (sw / 2 - leg / 2), seat_v + 0.03), (s0 * (sw / 2 - leg / 2), 0.46)], wood, leg
        )
    if rng.random() < 0.5:
        pen.line([(-sw / 2, 0.34), (sw / 2, 0.34)], wood, leg * 0.6)
    return (du / 2, seat_v + dv / 2, 0.05)


_DRAWERS: dict[str, Callable[[_Pen, _Look, np.random.Generator], LogoSpot]] = {
    "tops": _draw_top,
    "mugs": _draw_mug,
    "bottles": _draw_bottle,
    "sneakers": _draw_sneaker,
    "lamps": _draw_lamp,
    "backpacks": _draw_backpack,
    "hats": _draw_hat,
    "chairs": _draw_chair,
}


def _draw_logo(pen: _Pen, look: _Look, spot: LogoSpot) -> None:
    """A small print or brand mark, where the category's drawer said one fits."""
    if look.logo == "none":
        return
    u, v, s = spot
    ink = look.accent if _distance(look.accent, look.colour) > 150 else (245, 245, 240)
    if look.pattern != "solid":
        ink = (245, 245, 240) if sum(look.colour) < 380 else (25, 25, 28)
    if look.logo == "circle":
        pen.ellipse(u - s / 2, v - s / 2, u + s / 2, v + s / 2, None, ink, s * 0.18)
    elif look.logo == "star":
        star = [
            (
                u + (s / 2 if k % 2 == 0 else s / 5) * math.cos(math.radians(-90 + 36 * k)),
                v + (s / 2 if k % 2 == 0 else s / 5) * math.sin(math.radians(-90 + 36 * k)),
            )
            for k in range(10)
        ]
        pen.polygon(star, ink)
    elif look.logo == "diamond":
        pen.polygon([(u, v - s / 2), (u + s / 3, v), (u, v + s / 2), (u - s / 3, v)], ink)
    elif look.logo == "bars":
        for k in range(3):
            vv = v - s / 3 + k * s / 3
            pen.line([(u - s / 2, vv), (u + s / 2, vv)], ink, s * 0.14)
    else:
        font = _font(max(8, pen.px(s * 0.45)))
        x, y = pen.pt(u, v)
        pen.draw.text((x, y), look.brand, font=font, fill=(*ink, 255), anchor="mm")
