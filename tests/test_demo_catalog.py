"""The bundled demo catalogue: deterministic, complete, and broken exactly where it says."""

from __future__ import annotations

import csv
import os
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from demo import catalog as demo
from demo.catalog import CATEGORIES, HOSTILE_TITLE, TRANSFORMS, generate_demo_catalog

N_PRODUCTS = 40
IMAGE_SIZE = 160
REASONS = {
    "image_not_found": "embed",
    "image_empty": "embed",
    "image_truncated": "embed",
    "image_not_an_image": "embed",
    "duplicate_sku_id": "ingest",
    "missing_category": "ingest",
    "image_outside_roots": "ingest",
}


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


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoCatalog:
    root = tmp_path_factory.mktemp("demo") / "catalog"
    return generate_demo_catalog(root, n_products=N_PRODUCTS, seed=3, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def rows(catalog: demo.DemoCatalog) -> list[dict[str, str]]:
    return read_csv(catalog.catalog_path)


@pytest.fixture(scope="module")
def planted(catalog: demo.DemoCatalog) -> list[dict[str, str]]:
    return read_csv(catalog.planted_duplicates)


@pytest.fixture(scope="module")
def rejects(catalog: demo.DemoCatalog) -> dict[str, dict[str, str]]:
    return {r["reason"]: r for r in read_csv(catalog.expected_rejects)}


@pytest.fixture(scope="module")
def valid_rows(
    rows: list[dict[str, str]], rejects: dict[str, dict[str, str]]
) -> list[dict[str, str]]:
    rejected = {r["sku_id"] for r in rejects.values()}
    return [r for r in rows if r["sku_id"] not in rejected]


def test_paths_and_headers(catalog: demo.DemoCatalog) -> None:
    assert catalog.catalog_path == catalog.root / "catalog.csv"
    assert catalog.planted_duplicates == catalog.root / "planted_duplicates.csv"
    assert catalog.expected_rejects == catalog.root / "expected_rejects.csv"
    first_lines = {
        p.name: p.read_text(encoding="utf-8").splitlines()[0]
        for p in (catalog.catalog_path, catalog.planted_duplicates, catalog.expected_rejects)
    }
    assert first_lines == {
        "catalog.csv": "sku_id,category,image_uri,title,is_active,updated_at",
        "planted_duplicates.csv": "sku_id,original_sku_id,transform",
        "expected_rejects.csv": "sku_id,stage,reason",
    }


def test_same_arguments_give_identical_bytes(tmp_path: Path, catalog: demo.DemoCatalog) -> None:
    again = generate_demo_catalog(
        tmp_path / "again", n_products=N_PRODUCTS, seed=3, image_size=IMAGE_SIZE
    )
    first, second = all_files(catalog.root), all_files(again.root)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert different == []
    assert len([n for n in first if n.startswith("images/")]) > N_PRODUCTS


def test_another_seed_gives_another_catalogue(tmp_path: Path, catalog: demo.DemoCatalog) -> None:
    other = generate_demo_catalog(
        tmp_path / "other", n_products=N_PRODUCTS, seed=4, image_size=IMAGE_SIZE
    )
    assert other.catalog_path.read_bytes() != catalog.catalog_path.read_bytes()


def test_counts(
    rows: list[dict[str, str]],
    planted: list[dict[str, str]],
    rejects: dict[str, dict[str, str]],
) -> None:
    n_planted = len(planted)
    # The duplicate sku_id is two rows; every other fault is one row.
    assert len(rows) == N_PRODUCTS + n_planted + len(REASONS) + 1
    assert len(rejects) == len(REASONS)
    sku_counts = Counter(r["sku_id"] for r in rows)
    assert [s for s, k in sku_counts.items() if k > 1] == [rejects["duplicate_sku_id"]["sku_id"]]


def test_every_transform_is_planted(planted: list[dict[str, str]]) -> None:
    counts = Counter(p["transform"] for p in planted)
    assert set(counts) == set(TRANSFORMS)
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
        assert copy["category"] == original["category"]
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
    catalog: demo.DemoCatalog, valid_rows: list[dict[str, str]], planted: list[dict[str, str]]
) -> None:
    uri = {r["sku_id"]: catalog.root / r["image_uri"] for r in valid_rows}
    originals = [r for r in valid_rows if r["sku_id"] not in {p["sku_id"] for p in planted}]
    for p in planted:
        copy_path, original_path = uri[p["sku_id"]], uri[p["original_sku_id"]]
        with Image.open(copy_path) as copy, Image.open(original_path) as original:
            copy_size, original_size = copy.size, original.size
        if p["transform"] == "resized":
            assert copy_size == (original_size[0] // 2, original_size[1] // 2)
        elif p["transform"] == "cropped":
            for got, full in zip(copy_size, original_size, strict=True):
                assert 0.86 * full <= got <= 0.93 * full
        else:
            assert copy_size == original_size
        if p["transform"] in ("reencoded", "resized", "watermarked", "mirrored"):
            expected = thumbnail(original_path)
            if p["transform"] == "mirrored":
                expected = expected[:, ::-1]
            distance = np.abs(thumbnail(copy_path) - expected).mean()
            # Much closer to its own original than to any other product of the catalogue.
            others = [
                np.abs(thumbnail(uri[o["sku_id"]]) - expected).mean()
                for o in originals
                if o["sku_id"] != p["original_sku_id"]
            ]
            assert distance < 4.0 < min(others), (p, distance, min(others))


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


def test_originals_look_like_studio_photos(
    catalog: demo.DemoCatalog, valid_rows: list[dict[str, str]], planted: list[dict[str, str]]
) -> None:
    copies = {p["sku_id"] for p in planted}
    originals = [r for r in valid_rows if r["sku_id"] not in copies]
    assert len(originals) == N_PRODUCTS
    assert {r["category"] for r in originals} == set(CATEGORIES)
    images = []
    for row in originals:
        with Image.open(catalog.root / row["image_uri"]) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        # A light background in the corners, a product that is not background in the middle.
        corners = np.concatenate([pixels[:8, :8], pixels[:8, -8:]]).reshape(-1, 3)
        assert corners.mean() > 200, row
        images.append(pixels)
    # Two different products never share a photo.
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 3.0, (originals[i], originals[j])


def test_row_values(valid_rows: list[dict[str, str]]) -> None:
    assert {r["is_active"] for r in valid_rows} == {"true", "false"}
    inactive = sum(r["is_active"] == "false" for r in valid_rows) / len(valid_rows)
    assert 0.03 < inactive < 0.15
    stamps = []
    for row in valid_rows:
        assert row["category"] in CATEGORIES
        assert row["title"].strip()
        stamps.append(datetime.strptime(row["updated_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert {s.year for s in stamps} == {2026}
    # Drawn from the seed across the year, never the clock: a clock would bunch them together.
    assert (max(stamps) - min(stamps)).days > 90
    assert len(set(stamps)) > len(stamps) * 0.9


def test_hostile_title_survives_csv_on_a_valid_product(valid_rows: list[dict[str, str]]) -> None:
    hostile = [r for r in valid_rows if r["title"] == HOSTILE_TITLE]
    assert len(hostile) == 1
    assert hostile[0]["category"] == "mugs"
    assert hostile[0]["is_active"] == "true"


def test_bad_rows_are_broken_as_listed(
    catalog: demo.DemoCatalog, rows: list[dict[str, str]], rejects: dict[str, dict[str, str]]
) -> None:
    assert {reason: r["stage"] for reason, r in rejects.items()} == REASONS
    by_reason: dict[str, list[dict[str, str]]] = {
        reason: [row for row in rows if row["sku_id"] == r["sku_id"]]
        for reason, r in rejects.items()
    }

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
    assert no_category["category"] == ""
    with Image.open(catalog.root / no_category["image_uri"]) as image:
        image.load()

    [outside] = by_reason["image_outside_roots"]
    assert outside["image_uri"] == "../../../etc/passwd"
    assert outside["category"] in CATEGORIES

    # Each bad row has exactly one fault: the others are well-formed and active.
    for reason, bad in by_reason.items():
        for row in bad:
            assert row["title"] and row["is_active"] == "true" and row["updated_at"], reason
            if reason != "missing_category":
                assert row["category"] in CATEGORIES, reason


def test_without_bad_rows(tmp_path: Path) -> None:
    catalog = generate_demo_catalog(
        tmp_path / "clean", n_products=16, seed=5, include_bad_rows=False, image_size=96
    )
    rows = read_csv(catalog.catalog_path)
    assert read_csv(catalog.expected_rejects) == []
    assert (
        len({r["sku_id"] for r in rows})
        == len(rows)
        == 16 + len(read_csv(catalog.planted_duplicates))
    )
    for row in rows:
        assert row["category"] in CATEGORIES
        with Image.open(catalog.root / row["image_uri"]) as image:
            image.load()


def test_second_call_does_not_rewrite(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    first = generate_demo_catalog(root, n_products=16, seed=5, image_size=96)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    past = 1_600_000_000
    for path in files:
        os.utime(path, (past, past))  # far in the past: any rewrite would show

    second = generate_demo_catalog(root, n_products=16, seed=5, image_size=96)
    assert second == first
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files
    assert all(p.stat().st_mtime == past for p in files)

    # Other arguments replace the folder's content.
    generate_demo_catalog(root, n_products=16, seed=6, image_size=96)
    assert first.catalog_path.stat().st_mtime != past
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp or old folders left


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_demo_catalog(root, n_products=16)
    assert [p.name for p in root.iterdir()] == ["mine.txt"]


def test_an_interrupted_run_leaves_no_half_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "demo"
    calls = 0
    render = demo._render_product

    def failing_render(look: demo._Look, image_size: int) -> Image.Image:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return render(look, image_size)

    monkeypatch.setattr(demo, "_render_product", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_catalog(root, n_products=16, image_size=96)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(demo, "_render_product", render)
    generate_demo_catalog(root, n_products=16, image_size=96)
    before = all_files(root)
    calls = 0
    monkeypatch.setattr(demo, "_render_product", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_catalog(root, n_products=16, seed=8, image_size=96)
    assert all_files(root) == before  # the earlier catalogue is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_rejects_arguments_it_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_products"):
        generate_demo_catalog(tmp_path / "a", n_products=3)
    with pytest.raises(ValueError, match="image_size"):
        generate_demo_catalog(tmp_path / "b", image_size=8)
    assert list(tmp_path.iterdir()) == []
