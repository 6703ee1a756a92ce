"""The bundled demo catalog: real sample photos, deterministic, broken exactly where it says."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from demo import build_sample
from demo import catalog as demo
from demo.catalog import (
    CATEGORIES,
    CATEGORY_PATHS,
    FORMULA_TITLE,
    HOSTILE_TITLE,
    LONG_TAIL,
    SAMPLE,
    TRANSFORMS,
    generate_demo_catalog,
)

N_PRODUCTS = 40
REPO = Path(__file__).resolve().parents[1]
REASONS = {
    "image_not_found": "embed",
    "image_empty": "embed",
    "image_truncated": "embed",
    "image_not_an_image": "embed",
    "duplicate_sku_id": "ingest",
    "missing_category": "ingest",
    "image_outside_roots": "ingest",
}
# Broken image references come "a few of each kind": one per 100 original listings.
PER_KIND = ("image_not_found", "image_truncated", "image_not_an_image", "image_outside_roots")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def thumbnail(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), float)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoCatalog:
    root = tmp_path_factory.mktemp("demo") / "catalog"
    return generate_demo_catalog(root, n_products=N_PRODUCTS, seed=3)


@pytest.fixture(scope="module")
def rows(catalog: demo.DemoCatalog) -> list[dict[str, str]]:
    return read_csv(catalog.catalog_path)


@pytest.fixture(scope="module")
def planted(catalog: demo.DemoCatalog) -> list[dict[str, str]]:
    return read_csv(catalog.planted_duplicates)


@pytest.fixture(scope="module")
def rejects(catalog: demo.DemoCatalog) -> list[dict[str, str]]:
    return read_csv(catalog.expected_rejects)


@pytest.fixture(scope="module")
def valid_rows(rows: list[dict[str, str]], rejects: list[dict[str, str]]) -> list[dict[str, str]]:
    rejected = {r["sku_id"] for r in rejects}
    return [r for r in rows if r["sku_id"] not in rejected]


@pytest.fixture(scope="module")
def originals(
    valid_rows: list[dict[str, str]], planted: list[dict[str, str]]
) -> list[dict[str, str]]:
    copies = {p["sku_id"] for p in planted}
    return [r for r in valid_rows if r["sku_id"] not in copies]


def test_paths_and_headers(catalog: demo.DemoCatalog) -> None:
    assert catalog.catalog_path == catalog.root / "catalog.csv"
    assert catalog.planted_duplicates == catalog.root / "planted_duplicates.csv"
    assert catalog.expected_rejects == catalog.root / "expected_rejects.csv"
    first_lines = {
        p.name: p.read_text(encoding="utf-8").splitlines()[0]
        for p in (catalog.catalog_path, catalog.planted_duplicates, catalog.expected_rejects)
    }
    assert first_lines == {
        "catalog.csv": "sku_id,category,category_path,image_uri,title,is_active,updated_at",
        "planted_duplicates.csv": "sku_id,original_sku_id,transform",
        "expected_rejects.csv": "sku_id,stage,reason",
    }


def test_same_arguments_give_identical_bytes(tmp_path: Path, catalog: demo.DemoCatalog) -> None:
    again = generate_demo_catalog(tmp_path / "again", n_products=N_PRODUCTS, seed=3)
    first, second = all_files(catalog.root), all_files(again.root)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert different == []
    assert len([n for n in first if n.startswith("images/")]) > N_PRODUCTS


def test_another_seed_gives_another_catalog(tmp_path: Path, catalog: demo.DemoCatalog) -> None:
    other = generate_demo_catalog(tmp_path / "other", n_products=N_PRODUCTS, seed=4)
    assert other.catalog_path.read_bytes() != catalog.catalog_path.read_bytes()


def test_counts(
    rows: list[dict[str, str]], planted: list[dict[str, str]], rejects: list[dict[str, str]]
) -> None:
    # The duplicate sku_id is two rows; every other fault is one row.
    assert len(rows) == N_PRODUCTS + len(planted) + len(rejects) + 1
    assert Counter(r["reason"] for r in rejects) == Counter(list(REASONS))
    sku_counts = Counter(r["sku_id"] for r in rows)
    [twin] = [r["sku_id"] for r in rejects if r["reason"] == "duplicate_sku_id"]
    assert [s for s, k in sku_counts.items() if k > 1] == [twin]


def test_the_default_catalog_has_a_few_broken_rows_of_each_kind(tmp_path: Path) -> None:
    catalog = generate_demo_catalog(tmp_path / "default")
    rejects = Counter(r["reason"] for r in read_csv(catalog.expected_rejects))
    assert {reason: rejects[reason] for reason in PER_KIND} == dict.fromkeys(PER_KIND, 2)
    rows = read_csv(catalog.catalog_path)
    assert len(rows) > 200
    assert {r["category"] for r in rows} == {*CATEGORIES, ""}
    tail = [r for r in rows if r["category"] == LONG_TAIL]
    assert 1 <= len(tail) <= 3


def test_every_transform_is_planted(planted: list[dict[str, str]]) -> None:
    counts = Counter(p["transform"] for p in planted)
    assert set(counts) == set(TRANSFORMS)
    assert {"padded", "mirrored", "watermarked", "cropped"} <= set(counts)
    assert counts["exact"] >= 4


def test_planted_copies_are_new_listings_of_the_same_category(
    valid_rows: list[dict[str, str]], planted: list[dict[str, str]]
) -> None:
    by_sku = {r["sku_id"]: r for r in valid_rows}
    copies = {p["sku_id"] for p in planted}
    originals = {p["original_sku_id"] for p in planted}
    assert not copies & originals
    assert len(copies) == len(planted)
    for p in planted:
        copy, original = by_sku[p["sku_id"]], by_sku[p["original_sku_id"]]
        assert copy["category"] == original["category"] != LONG_TAIL
        assert copy["image_uri"] != original["image_uri"]
        # Both sides must take part in duplicate detection.
        assert copy["is_active"] == original["is_active"] == "true"


def test_exact_copies_are_byte_identical_and_others_are_not(
    catalog: demo.DemoCatalog, valid_rows: list[dict[str, str]], planted: list[dict[str, str]]
) -> None:
    uri = {r["sku_id"]: r["image_uri"] for r in valid_rows}
    for p in planted:
        copy = (catalog.root / uri[p["sku_id"]]).read_bytes()
        original = (catalog.root / uri[p["original_sku_id"]]).read_bytes()
        if p["transform"] == "exact":
            assert copy == original, p
        else:
            assert copy != original, p


def test_planted_copies_are_made_from_their_original(
    catalog: demo.DemoCatalog,
    valid_rows: list[dict[str, str]],
    planted: list[dict[str, str]],
    originals: list[dict[str, str]],
) -> None:
    uri = {r["sku_id"]: catalog.root / r["image_uri"] for r in valid_rows}
    for p in planted:
        copy_path, original_path = uri[p["sku_id"]], uri[p["original_sku_id"]]
        with Image.open(copy_path) as copy, Image.open(original_path) as original:
            (cw, ch), (ow, oh) = copy.size, original.size
        if p["transform"] == "resized":
            assert (cw, ch) == (ow // 2, oh // 2)
        elif p["transform"] == "cropped":
            assert 0.86 * ow <= cw <= 0.93 * ow and 0.86 * oh <= ch <= 0.93 * oh
        elif p["transform"] == "padded":
            assert cw == ch == max(ow, oh)
            # The original, whole, in the middle of a white square.
            x, y = (cw - ow) // 2, (ch - oh) // 2
            inner = pixels(copy_path)[y : y + oh, x : x + ow]
            assert np.abs(inner - pixels(original_path)).mean() < 3.0, p
            border = pixels(copy_path)[:, : max(1, x)] if x else pixels(copy_path)[: max(1, y)]
            assert border.mean() > 245, p
        else:
            assert (cw, ch) == (ow, oh)
        if p["transform"] in ("reencoded", "resized", "watermarked", "mirrored"):
            expected = thumbnail(original_path)
            if p["transform"] == "mirrored":
                expected = expected[:, ::-1]
            distance = np.abs(thumbnail(copy_path) - expected).mean()
            # Much closer to its own original than to any other product of the catalog.
            others = [
                np.abs(thumbnail(uri[o["sku_id"]]) - expected).mean()
                for o in originals
                if o["sku_id"] != p["original_sku_id"]
            ]
            assert distance < 4.0 < min(others), (p, distance, min(others))


def test_originals_are_the_sample_photos_each_once(
    catalog: demo.DemoCatalog, originals: list[dict[str, str]]
) -> None:
    sample = read_csv(SAMPLE / "manifest.csv")
    by_bytes = {(SAMPLE / s["file"]).read_bytes(): s for s in sample}
    assert len(originals) == N_PRODUCTS
    assert {r["category"] for r in originals} == set(CATEGORIES)
    used = []
    for row in originals:
        path = catalog.root / row["image_uri"]
        if path.suffix == ".jpg":
            source = by_bytes[path.read_bytes()]  # the sample's file as it is
        else:  # a PNG holds the sample photo's pixels
            source = next(
                s
                for s in sample
                if (SAMPLE / s["file"]).stat().st_size
                and pixels(SAMPLE / s["file"]).shape == pixels(path).shape
                and (pixels(SAMPLE / s["file"]) == pixels(path)).all()
            )
        assert demo._FOLDERS[source["category"]] == row["category"], row
        used.append(source["file"])
    assert len(set(used)) == len(used)


def test_every_valid_row_has_a_decodable_image(
    catalog: demo.DemoCatalog, valid_rows: list[dict[str, str]]
) -> None:
    assert len(valid_rows) > N_PRODUCTS
    for row in valid_rows:
        uri = row["image_uri"]
        assert not Path(uri).is_absolute() and ".." not in Path(uri).parts
        assert uri.startswith(f"images/{row['category']}/{row['sku_id']}")
        assert Path(uri).suffix in (".jpg", ".png")
        with Image.open(catalog.root / uri) as image:
            image.load()
            assert image.format == ("PNG" if uri.endswith(".png") else "JPEG")
            assert image.mode == "RGB"
            assert max(image.size) <= build_sample.LONG_SIDE


def test_categories_sit_in_a_tree_with_a_long_tail(valid_rows: list[dict[str, str]]) -> None:
    for row in valid_rows:
        assert row["category_path"] == CATEGORY_PATHS[row["category"]]
        assert row["category_path"].split(" > ")[-1].lower() == row["category"]
    per_category = Counter(r["category"] for r in valid_rows)
    assert 1 <= per_category[LONG_TAIL] <= 3
    # Its parent holds other categories to borrow similar items from.
    parent = CATEGORY_PATHS[LONG_TAIL].rsplit(" > ", 1)[0]
    siblings = [c for c, p in CATEGORY_PATHS.items() if p.startswith(parent) and c != LONG_TAIL]
    assert siblings and all(per_category[c] > 3 for c in siblings)


def test_row_values(valid_rows: list[dict[str, str]]) -> None:
    assert {r["is_active"] for r in valid_rows} == {"true", "false"}
    inactive = sum(r["is_active"] == "false" for r in valid_rows) / len(valid_rows)
    assert 0.03 < inactive < 0.15
    stamps = []
    for row in valid_rows:
        assert row["category"] in CATEGORIES
        assert row["title"].strip() and "\n" not in row["title"]
        stamps.append(datetime.strptime(row["updated_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert {s.year for s in stamps} == {2026}
    # Drawn from the seed across the year, never the clock: a clock would bunch them together.
    assert (max(stamps) - min(stamps)).days > 90
    assert len(set(stamps)) > len(stamps) * 0.9


@pytest.mark.parametrize("title", [HOSTILE_TITLE, FORMULA_TITLE])
def test_hostile_and_formula_titles_are_on_listings_with_an_exact_copy(
    title: str, valid_rows: list[dict[str, str]], planted: list[dict[str, str]]
) -> None:
    with_title = {r["sku_id"] for r in valid_rows if r["title"] == title}
    [original] = [
        p["original_sku_id"]
        for p in planted
        if p["original_sku_id"] in with_title and p["transform"] == "exact"
    ]
    assert with_title == {original} | {
        p["sku_id"] for p in planted if p["original_sku_id"] == original
    }
    assert all(r["is_active"] == "true" for r in valid_rows if r["sku_id"] in with_title)


def test_bad_rows_are_broken_as_listed(
    catalog: demo.DemoCatalog, rows: list[dict[str, str]], rejects: list[dict[str, str]]
) -> None:
    assert {r["reason"]: r["stage"] for r in rejects} == REASONS
    by_reason: dict[str, list[dict[str, str]]] = {}
    for r in rejects:
        by_reason.setdefault(r["reason"], []).extend(x for x in rows if x["sku_id"] == r["sku_id"])

    def image_of(reason: str) -> Path:
        [row] = by_reason[reason]
        return catalog.root / row["image_uri"]

    assert not image_of("image_not_found").exists()
    assert image_of("image_empty").stat().st_size == 0

    truncated = image_of("image_truncated")
    assert truncated.read_bytes()[:2] == b"\xff\xd8"  # a real JPEG header...
    with pytest.raises(OSError), Image.open(truncated) as image:
        image.load()  # ...whose data stops halfway

    with pytest.raises(UnidentifiedImageError):
        Image.open(image_of("image_not_an_image"))

    twins = by_reason["duplicate_sku_id"]
    assert len(twins) == 2
    assert twins[0]["image_uri"] != twins[1]["image_uri"]
    for twin in twins:
        with Image.open(catalog.root / twin["image_uri"]) as image:
            image.load()

    [no_category] = by_reason["missing_category"]
    assert no_category["category"] == "" == no_category["category_path"]
    with Image.open(catalog.root / no_category["image_uri"]) as image:
        image.load()

    [outside] = by_reason["image_outside_roots"]
    assert ".." in Path(outside["image_uri"]).parts
    assert not (catalog.root / outside["image_uri"]).resolve().is_relative_to(catalog.root)
    assert outside["category"] in CATEGORIES

    # Each bad row has exactly one fault: the others are well-formed and active.
    for reason, bad in by_reason.items():
        for row in bad:
            assert row["title"] and row["is_active"] == "true" and row["updated_at"], reason
            if reason != "missing_category":
                assert row["category"] in CATEGORIES, reason
    # Their photos are sample photos no valid listing shows.
    valid_images = {
        (catalog.root / r["image_uri"]).read_bytes()
        for r in rows
        if r["sku_id"] not in {x["sku_id"] for x in rejects}
    }
    for row in [*twins, no_category]:
        assert (catalog.root / row["image_uri"]).read_bytes() not in valid_images


def test_without_bad_rows(tmp_path: Path) -> None:
    catalog = generate_demo_catalog(
        tmp_path / "clean", n_products=20, seed=5, include_bad_rows=False
    )
    rows = read_csv(catalog.catalog_path)
    assert read_csv(catalog.expected_rejects) == []
    assert (
        len({r["sku_id"] for r in rows})
        == len(rows)
        == 20 + len(read_csv(catalog.planted_duplicates))
    )
    for row in rows:
        assert row["category"] in CATEGORIES
        with Image.open(catalog.root / row["image_uri"]) as image:
            image.load()


def test_second_call_does_not_rewrite(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    first = generate_demo_catalog(root, n_products=20, seed=5)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    past = 1_600_000_000
    for path in files:
        os.utime(path, (past, past))  # far in the past: any rewrite would show

    second = generate_demo_catalog(root, n_products=20, seed=5)
    assert second == first
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files
    assert all(p.stat().st_mtime == past for p in files)

    # Other arguments replace the folder's content.
    generate_demo_catalog(root, n_products=20, seed=6)
    assert first.catalog_path.stat().st_mtime != past
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp or old folders left


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_demo_catalog(root, n_products=20)
    assert [p.name for p in root.iterdir()] == ["mine.txt"]


def test_an_interrupted_run_leaves_no_half_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "demo"
    calls = 0
    save = demo._save_original

    def failing_save(photo: Path, path: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        save(photo, path)

    monkeypatch.setattr(demo, "_save_original", failing_save)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_catalog(root, n_products=20)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(demo, "_save_original", save)
    generate_demo_catalog(root, n_products=20)
    before = all_files(root)
    calls = 0
    monkeypatch.setattr(demo, "_save_original", failing_save)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_catalog(root, n_products=20, seed=8)
    assert all_files(root) == before  # the earlier catalog is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_rejects_arguments_it_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_products"):
        generate_demo_catalog(tmp_path / "a", n_products=3)
    with pytest.raises(ValueError, match="n_products"):
        generate_demo_catalog(tmp_path / "b", n_products=10_000)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The sample in the repository
# --------------------------------------------------------------------------------------------


def test_the_sample_is_small_licensed_and_listed() -> None:
    sample = read_csv(SAMPLE / "manifest.csv")
    files = sorted(str(p.relative_to(SAMPLE)) for p in SAMPLE.rglob("*.jpg"))
    assert sorted(s["file"] for s in sample) == files
    assert 200 <= len(files) <= 300
    assert Counter(s["category"] for s in sample) == dict.fromkeys(
        build_sample.CATEGORIES, build_sample.PER_CATEGORY
    )
    assert sum((SAMPLE / f).stat().st_size for f in files) < 6_000_000
    assert "CC0 1.0 Universal" in (SAMPLE / "LICENSE").read_text()
    readme = (SAMPLE / "README.md").read_text()
    assert "clothing-dataset" in readme and "build_sample.py" in readme
    for s in sample:
        with Image.open(SAMPLE / s["file"]) as image:
            assert image.format == "JPEG" and max(image.size) == build_sample.LONG_SIDE


def test_the_sample_rebuilds_byte_for_byte_from_the_shared_dataset() -> None:
    if not (build_sample.DEFAULT_SOURCE / "train").is_dir():
        pytest.skip(f"{build_sample.DEFAULT_SOURCE} is missing: the sample's source dataset")
    done = subprocess.run(
        [sys.executable, str(REPO / "demo" / "build_sample.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
