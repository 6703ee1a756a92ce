"""Incremental embedding on Spark: unchanged images reuse their stored vector exactly.

Two runs of the real embed stage over a catalog of generated photos: between them one image
changes, one SKU is new and one image is removed. A different model re-embeds everything.
The network has random weights (behind the explicit flag): these tests check what is reused,
not what the vectors mean.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from lookalike.config import Config
from lookalike.pipeline import RunContext, run_stage

pytestmark = pytest.mark.slow

DAY1, DAY2, DAY3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    x, y = (int(v) for v in rng.integers(10, 60, 2))
    draw.ellipse((x, y, x + 80, y + 50), fill=colour)
    image.save(path, quality=90)


def _write_catalog(folder: Path, skus: dict[str, str]) -> Path:
    path = folder / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        for sku, image in sorted(skus.items()):
            writer.writerow([sku, "things", image, f"thing {sku}", "true"])
    return path


def _embeddings(ctx: RunContext) -> pd.DataFrame:
    return pd.read_parquet(ctx.layout.embeddings).set_index("sku_id").sort_index()


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("incremental")
    (folder / "images").mkdir()
    skus = {}
    for i in range(12):
        _photo(folder / "images" / f"p{i}.jpg", seed=i)
        skus[f"SKU-{i:02d}"] = f"images/p{i}.jpg"
    # An exact copy under another SKU: one vector, computed once, reused by content hash.
    (folder / "images" / "copy.jpg").write_bytes((folder / "images" / "p0.jpg").read_bytes())
    skus["SKU-COPY"] = "images/copy.jpg"
    (folder / "images" / "broken.jpg").write_bytes(b"<html>404</html>")
    skus["SKU-BROKEN"] = "images/broken.jpg"
    catalog_path = _write_catalog(folder, skus)
    config = Config().with_overrides(
        catalog={"path": str(catalog_path)},
        output={"root": str(folder / "out")},
        model={"weights": "random", "allow_random_weights": True},
    )

    def run(day: dt.date, cfg: Config = config) -> RunContext:
        ctx = RunContext(cfg, day)
        run_stage("ingest", spark, ctx)
        return ctx, run_stage("embed", spark, ctx)

    first = run(DAY1)
    # Overnight: one photo replaced, one touched (same bytes, a newer time), one SKU new, one
    # SKU gone.
    _photo(folder / "images" / "p3.jpg", seed=99)
    touched = folder / "images" / "p7.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    _photo(folder / "images" / "new.jpg", seed=100)
    skus["SKU-NEW"] = "images/new.jpg"
    del skus["SKU-05"]
    _write_catalog(folder, skus)
    second = run(DAY2)
    other_model = config.with_overrides(model={"image_size": 192})
    third = run(DAY3, other_model)
    return first, second, third, folder


def test_first_run_embeds_every_readable_image(runs):
    (ctx, result), _, _, _ = runs
    counts = result.counts
    assert counts["images"] == 14
    assert counts["embedded"] == 13
    assert counts["reused"] == 0
    assert counts["rejected"] == 1
    assert counts["worker_peak_rss_mb"] > 100  # a Python worker holding torch and a network
    vectors = _embeddings(ctx)
    np.testing.assert_array_equal(
        vectors.loc["SKU-COPY", "embedding"], vectors.loc["SKU-00", "embedding"]
    )


def test_unchanged_images_reuse_the_stored_vector_exactly(runs):
    (day1, _), (day2, result), _, folder = runs
    counts = result.counts
    # 10 unchanged SKUs and the copy reuse their vectors; the replaced photo and the new
    # SKU are embedded.
    assert counts["reused"] == 11
    assert counts["embedded"] == 2
    assert counts["rejected"] == 1
    assert counts["vectors"] == 13
    # The listing alone settles 10 of them (no byte read); the touched photo is read, and its
    # bytes hash as before.
    assert counts["reused_by_listing"] == 10
    assert counts["reused_by_content"] == 1
    read = ["p3.jpg", "p7.jpg", "new.jpg", "broken.jpg"]
    assert counts["hashed"] == len(read)
    assert counts["bytes_hashed"] == sum((folder / "images" / n).stat().st_size for n in read)
    before, after = _embeddings(day1), _embeddings(day2)
    assert "SKU-05" not in after.index and "SKU-NEW" in after.index
    for sku in after.index.difference(["SKU-03", "SKU-NEW"]):
        assert np.array_equal(after.loc[sku, "embedding"], before.loc[sku, "embedding"]), sku
        assert after.loc[sku, "embedded_at"] == before.loc[sku, "embedded_at"], sku
    assert after.loc["SKU-03", "content_hash"] != before.loc["SKU-03", "content_hash"]
    assert not np.allclose(after.loc["SKU-03", "embedding"], before.loc["SKU-03", "embedding"])
    assert after.loc["SKU-03", "embedded_at"] > before.loc["SKU-03", "embedded_at"]


def test_rejects_of_an_incremental_run_are_still_reported(runs):
    _, (day2, _), _, _ = runs
    rejects = pd.read_parquet(day2.layout.rejects("embed"))
    assert rejects[["sku_id", "stage", "reason"]].values.tolist() == [
        ["SKU-BROKEN", "embed", "image_not_an_image"]
    ]


def test_vectors_record_where_their_image_was_and_its_listing(runs):
    (day1, _), (day2, _), _, folder = runs
    after = _embeddings(day2)
    p3 = (folder / "images" / "p3.jpg").stat()
    assert after.loc["SKU-03", "image_uri"] == str(folder / "images" / "p3.jpg")
    assert after.loc["SKU-03", "image_version"] == (
        f"size={p3.st_size};mtime_ns={p3.st_mtime_ns};ino={p3.st_ino}"
    )
    # The touched photo's vector is the stored one, under tonight's listing.
    assert after.loc["SKU-07", "image_version"] != _embeddings(day1).loc["SKU-07", "image_version"]


def test_a_new_model_re_embeds_everything(runs):
    _, (day2, _), (day3, result), _ = runs
    assert result.counts["reused"] == 0
    assert result.counts["embedded"] == 13
    assert set(_embeddings(day3)["model_id"]) != set(_embeddings(day2)["model_id"])
