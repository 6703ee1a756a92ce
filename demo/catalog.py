"""The bundled demo catalog: real product photos (demo/sample/) listed as a small clothing shop.

A fresh machine has no datasets, so `make demo` builds its catalog from the photos committed in
`demo/sample/` (real clothing photos, CC0; `demo/build_sample.py` rebuilds them from the shared
dataset): ten categories with titles, one of them a long tail of one to three listings that
borrows similar items from its parent in the shop's tree (`category_path`), inactive listings,
seller copies of real photos planted as new listings (exact, re-encoded, resized, cropped,
padded onto a square, watermarked, mirrored), a few broken rows of each kind that the job must
reject with a known reason, a hostile title and a spreadsheet-formula title. The same arguments
always produce byte-identical files, with two side files the tests read: which listings are
planted copies of which (`planted_duplicates.csv`) and which rows must be rejected, where and
why (`expected_rejects.csv`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = [
    "CATEGORIES",
    "CATEGORY_PATHS",
    "FORMULA_TITLE",
    "GENERATOR_VERSION",
    "HOSTILE_TITLE",
    "LONG_TAIL",
    "SAMPLE",
    "TRANSFORMS",
    "DemoCatalog",
    "generate_demo_catalog",
]

# Bump whenever the output for the same arguments changes, so existing demo folders regenerate.
GENERATOR_VERSION = 2

SAMPLE = Path(__file__).resolve().parent / "sample"

# The shop's category for each folder of the sample, and its place in the shop's tree.
_FOLDERS = {
    "dress": "dresses",
    "hat": "hats",
    "longsleeve": "long-sleeves",
    "outwear": "outerwear",
    "pants": "trousers",
    "shirt": "shirts",
    "shoes": "shoes",
    "shorts": "shorts",
    "skirt": "skirts",
    "t-shirt": "t-shirts",
}
CATEGORY_PATHS = {
    "dresses": "Clothing > Dresses",
    "hats": "Accessories > Hats",
    "long-sleeves": "Clothing > Tops > Long-sleeves",
    "outerwear": "Clothing > Outerwear",
    "trousers": "Clothing > Bottoms > Trousers",
    "shirts": "Clothing > Tops > Shirts",
    "shoes": "Shoes",
    "shorts": "Clothing > Bottoms > Shorts",
    "skirts": "Clothing > Bottoms > Skirts",
    "t-shirts": "Clothing > Tops > T-shirts",
}
CATEGORIES = tuple(_FOLDERS.values())
# One to three listings: too few to fill K alone, so it borrows from "Clothing > Bottoms".
LONG_TAIL = "skirts"
TRANSFORMS = (
    "exact",
    "reencoded",
    "resized",
    "cropped",
    "padded",
    "watermarked",
    "mirrored",
)

CATALOG_HEADER = (
    "sku_id",
    "category",
    "category_path",
    "image_uri",
    "title",
    "is_active",
    "updated_at",
)
PLANTED_HEADER = ("sku_id", "original_sku_id", "transform")
REJECTS_HEADER = ("sku_id", "stage", "reason")

HOSTILE_TITLE = '<script>alert("x")</script> & "quoted", size M'
# Opened in a spreadsheet unescaped, this would be a live link (OWASP "CSV injection").
FORMULA_TITLE = '=HYPERLINK("https://example.invalid/win","Free shirt, click here")'

DEFAULT_PRODUCTS = 200
_RESERVED_PER_CATEGORY = 2  # sample photos kept back for the broken rows that need an image
_REENCODE_QUALITY = 35
_PLANTED_SHARE = 0.13
_INACTIVE_SHARE = 0.08
_PNG_SHARE = 0.05
_MIN_PRODUCTS = 2 * len(CATEGORIES)
_YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)

_BRANDS = ("Nova", "Kiro", "Zen", "Atlas", "Lumo", "Pixa", "Orbit", "Moss", "Fjord", "Sable")
# Generic on purpose: nothing here knows a photo's colour or cut, so a title never contradicts
# its photo (a "red sandal" shown as a black boot would mislead whoever reads the report).
_LINES = ("Classic", "Everyday", "Essential", "Premium", "Signature", "Weekend")
_NOUNS = {
    "dresses": "dress",
    "hats": "hat",
    "long-sleeves": "long-sleeve top",
    "outerwear": "jacket",
    "trousers": "trousers",
    "shirts": "shirt",
    "shoes": "shoes",
    "shorts": "shorts",
    "skirts": "skirt",
    "t-shirts": "t-shirt",
}
_SIZES = {
    "hats": ("one size",),
    "shoes": ("EU 37", "EU 39", "EU 41", "EU 43", "EU 45"),
    "trousers": ("W28", "W30", "W32", "W34", "W36"),
}
_CLOTHING_SIZES = ("XS", "S", "M", "L", "XL")
_WATERMARKS = ("SALE", "ShopMart", "BestDeals", "-30%", "outlet24")


@dataclass(frozen=True)
class DemoCatalog:
    """Where a generated demo catalog lies; every path is inside `root`."""

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
    n_products: int = DEFAULT_PRODUCTS,
    seed: int = 7,
    include_bad_rows: bool = True,
    sample: Path = SAMPLE,
) -> DemoCatalog:
    """Write the demo catalog into `root` (unless an identical one is already there).

    `n_products` original listings (each a different photo of the sample) are listed, plus the
    planted copies and, with `include_bad_rows`, the broken rows. `root` is created, or
    replaced when it holds an earlier demo catalog (it has a `.manifest.json`); any other
    existing folder is refused rather than overwritten.
    """
    photos = _sample_photos(Path(sample))
    # The long tail takes one to three listings; the other categories share the rest.
    most = 1 + sum(
        max(0, len(v) - _RESERVED_PER_CATEGORY) for k, v in photos.items() if k != LONG_TAIL
    )
    if not _MIN_PRODUCTS <= n_products <= most:
        raise ValueError(
            f"n_products must be between {_MIN_PRODUCTS} and {most} (the sample's photos), "
            f"got {n_products}"
        )
    root = Path(root)
    manifest = {
        "generator": "demo.catalog",
        "version": GENERATOR_VERSION,
        "n_products": n_products,
        "seed": seed,
        "include_bad_rows": include_bad_rows,
        "sample": _read_text(Path(sample) / "manifest.csv"),
    }
    catalog = DemoCatalog.at(root)
    manifest_path = root / ".manifest.json"
    if root.exists():
        if not manifest_path.is_file():
            raise FileExistsError(f"{root} exists and is not a demo catalog; refusing to replace")
        if _read_json(manifest_path) == manifest and catalog.catalog_path.is_file():
            return catalog

    root.parent.mkdir(parents=True, exist_ok=True)
    # Built beside root and renamed into place, so an interrupted run never leaves half a catalog.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would follow the folder after the rename
        _write_catalog(
            tmp, photos, n_products=n_products, seed=seed, include_bad_rows=include_bad_rows
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


def _sample_photos(sample: Path) -> dict[str, list[Path]]:
    """The sample's photos by shop category, in the manifest's order."""
    manifest = sample / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing: run demo/build_sample.py")
    photos: dict[str, list[Path]] = {c: [] for c in CATEGORIES}
    with manifest.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            photos[_FOLDERS[row["category"]]].append(sample / row["file"])
    return photos


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# The catalog: which products, which copies, which broken rows
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
        path = CATEGORY_PATHS.get(self.category, "")
        return (
            self.sku_id,
            self.category,
            path,
            self.image_uri,
            self.title,
            active,
            self.updated_at,
        )


def _write_catalog(
    out: Path,
    photos: dict[str, list[Path]],
    *,
    n_products: int,
    seed: int,
    include_bad_rows: bool,
) -> None:
    rng = np.random.default_rng([seed, 0])
    # Each category's photos in an order of the seed; originals take them from the front,
    # broken rows that need a photo from the back.
    decks = {c: [ps[int(i)] for i in rng.permutation(len(ps))] for c, ps in photos.items()}
    others = [c for c in CATEGORIES if c != LONG_TAIL]
    room = {c: len(decks[c]) - _RESERVED_PER_CATEGORY for c in others}
    n_tail = max(int(rng.integers(1, 4)), n_products - sum(room.values()))
    quota = {c: 0 for c in CATEGORIES}
    quota[LONG_TAIL] = n_tail
    for k in range(n_products - n_tail):
        # Round robin from a seeded start, skipping categories whose photos are used up.
        open_ = [c for c in others if quota[c] < room[c]]
        quota[open_[(k + int(seed)) % len(open_)]] += 1
    originals = [(c, decks[c][i]) for c in CATEGORIES for i in range(quota[c])]
    originals = [originals[int(i)] for i in rng.permutation(len(originals))]
    n_originals = len(originals)

    n_planted = max(round(n_originals * _PLANTED_SHARE), len(TRANSFORMS) + 3)
    per_other = max(1, n_planted // len(TRANSFORMS))
    counts = {t: per_other for t in TRANSFORMS}
    counts["exact"] = max(4, n_planted - per_other * (len(TRANSFORMS) - 1))
    transforms = [t for t in TRANSFORMS for _ in range(counts[t])]
    n_planted = len(transforms)

    # sku_ids are a shuffled range, so copies sit among the originals as in a real feed.
    numbers = rng.permutation(n_originals + n_planted) + 1
    skus = [f"SKU-{k:06d}" for k in numbers]
    original_skus, planted_skus = skus[:n_originals], skus[n_originals:]

    # Copies are made of listings outside the long tail (it stays one to three listings).
    eligible = [i for i, (c, _) in enumerate(originals) if c != LONG_TAIL]
    originals_of_copies = [int(i) for i in rng.choice(eligible, size=n_planted, replace=False)]
    in_pairs = set(originals_of_copies)
    candidates = [i for i in eligible if i not in in_pairs]
    n_inactive = round((n_originals + n_planted) * _INACTIVE_SHARE)
    inactive = {int(i) for i in rng.choice(candidates, size=n_inactive, replace=False)}
    as_png = {i for i in range(n_originals) if rng.random() < _PNG_SHARE}
    # The hostile and the formula title go on listings that have an exact copy, so both show
    # in the duplicates report and its CSV, where escaping them matters.
    exact_originals = [
        i for i, t in zip(originals_of_copies, transforms, strict=True) if t == "exact"
    ]
    special_titles = {exact_originals[0]: HOSTILE_TITLE, exact_originals[1]: FORMULA_TITLE}

    rows: list[_Row] = []
    image_of: dict[int, Path] = {}
    for i, (category, photo) in enumerate(originals):
        rel = f"images/{category}/{original_skus[i]}{'.png' if i in as_png else '.jpg'}"
        _save_original(photo, out / rel)
        image_of[i] = out / rel
        title = special_titles.get(i) or _title(category, rng)
        rows.append(
            _Row(original_skus[i], category, rel, title, i not in inactive, _timestamp(rng))
        )

    planted: list[tuple[str, str, str]] = []
    for sku, i, transform in zip(planted_skus, originals_of_copies, transforms, strict=True):
        src = image_of[i]
        ext = ".jpg" if transform == "reencoded" else src.suffix
        rel = f"images/{originals[i][0]}/{sku}{ext}"
        _plant_copy(src, out / rel, transform, np.random.default_rng([seed, 1, len(planted)]))
        original = rows[i]
        rows.append(_Row(sku, original.category, rel, original.title, True, _timestamp(rng)))
        planted.append((sku, original_skus[i], transform))

    rows.sort(key=lambda r: r.sku_id)
    rejects: list[tuple[str, str, str]] = []
    if include_bad_rows:
        spare = {c: decks[c][quota[c] :] for c in others}
        per_kind = max(1, n_originals // 100)
        bad_rows, rejects = _bad_rows(out, n_originals + n_planted, spare, per_kind, rng)
        rows.extend(bad_rows)

    _write_csv(out / "catalog.csv", CATALOG_HEADER, [r.as_csv() for r in rows])
    _write_csv(out / "planted_duplicates.csv", PLANTED_HEADER, sorted(planted))
    _write_csv(out / "expected_rejects.csv", REJECTS_HEADER, rejects)


def _title(category: str, rng: np.random.Generator) -> str:
    brand = _BRANDS[int(rng.integers(len(_BRANDS)))]
    line = _LINES[int(rng.integers(len(_LINES)))]
    sizes = _SIZES.get(category, _CLOTHING_SIZES)
    size = sizes[int(rng.integers(len(sizes)))]
    return f"{brand} {line} {_NOUNS[category]}, {size if size == 'one size' else 'size ' + size}"


def _timestamp(rng: np.random.Generator) -> str:
    moment = _YEAR_START + timedelta(seconds=int(rng.integers(0, 365 * 24 * 3600)))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bad_rows(
    out: Path,
    first_number: int,
    spare: dict[str, list[Path]],
    per_kind: int,
    rng: np.random.Generator,
) -> tuple[list[_Row], list[tuple[str, str, str]]]:
    """Rows the job must reject, each with the one fault that names its reason code:
    `per_kind` of each broken image reference, one of each other fault."""
    numbers = iter(range(first_number + 1, first_number + 1000))
    categories = iter([c for _ in range(4 * per_kind + 4) for c in spare])
    rows: list[_Row] = []
    rejects: list[tuple[str, str, str]] = []

    def add(
        reason: str, stage: str, category: str, uri: str, *, sku: str | None = None, kind=""
    ) -> str:
        sku = sku or f"SKU-{next(numbers):06d}"
        title = _title(category or kind, rng)
        rows.append(_Row(sku, category, uri, title, True, _timestamp(rng)))
        if (sku, stage, reason) not in rejects:
            rejects.append((sku, stage, reason))
        return sku

    def photo(category: str) -> Path:
        return spare[category].pop(0)

    # Two different products listed under one sku_id: neither row can be trusted.
    category = next(categories)
    twin = f"SKU-{next(numbers):06d}"
    for part in ("", "_b"):
        rel = f"images/{category}/{twin}{part}.jpg"
        _save_original(photo(category), out / rel)
        add("duplicate_sku_id", "ingest", category, rel, sku=twin)

    category = next(categories)
    sku = f"SKU-{next(numbers):06d}"
    rel = f"images/{category}/{sku}.jpg"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_bytes(b"")
    add("image_empty", "embed", category, rel, sku=sku)

    category = next(categories)
    rel = f"images/{category}/no-category.jpg"
    _save_original(photo(category), out / rel)
    add("missing_category", "ingest", "", rel, kind=category)

    for k in range(per_kind):
        # The seller's feed names a photo that was never uploaded.
        category = next(categories)
        sku = f"SKU-{next(numbers):06d}"
        add("image_not_found", "embed", category, f"images/{category}/{sku}.jpg", sku=sku)

        # A download cut off halfway: the JPEG header is fine, the scan data ends early.
        category = next(categories)
        sku = f"SKU-{next(numbers):06d}"
        rel = f"images/{category}/{sku}.jpg"
        whole = photo(category).read_bytes()
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(whole[: len(whole) // 2])
        add("image_truncated", "embed", category, rel, sku=sku)

        # An error page saved under the image's name.
        category = next(categories)
        sku = f"SKU-{next(numbers):06d}"
        rel = f"images/{category}/{sku}.jpg"
        page = (
            "404 Not Found\nThe image you requested could not be found.\n"
            if k % 2 == 0
            else "<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n"
        )
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(page)
        add("image_not_an_image", "embed", category, rel, sku=sku)

        # A path that leads out of the catalog's folder.
        category = next(categories)
        uri = "../../../etc/passwd" if k % 2 == 0 else "../../outside/photo.jpg"
        add("image_outside_roots", "ingest", category, uri)
    return rows, sorted(rejects)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# Files: the originals and the planted copies
# --------------------------------------------------------------------------------------------


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    # Fixed quality and subsampling, no optimize/progressive: the same pixels give the same bytes.
    image.convert("RGB").save(buffer, "JPEG", quality=quality, subsampling=2, optimize=False)
    return buffer.getvalue()


def _save(image: Image.Image, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG", compress_level=6)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(_jpeg_bytes(image, quality))


def _save_original(photo: Path, path: Path) -> None:
    """The sample's JPEG as it is, or decoded into a PNG (some feeds send PNGs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        with Image.open(photo) as image:
            _save(image, path)
    else:
        shutil.copyfile(photo, path)


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
        dst.write_bytes(_jpeg_bytes(image, _REENCODE_QUALITY))
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
    elif transform == "padded":
        # Centred on a white square, as marketplaces that want square photos show them.
        side = max(w, h)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        image = square
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
    colour = (200, 30, 30) if text in ("SALE", "-30%") else (240, 240, 240)
    draw.text((x - x0, y - y0), text, font=font, fill=(*colour, 150))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font still works
        return ImageFont.load_default()
