"""An unchanged night of the embed stage: settled by the images' listing, against hashing them all.

A folder of --images small JPEGs (made here, 1,000 per subfolder) and a catalog of them go
through the real ingest stage; the first night's vectors are written as the embed stage
writes them (1280-d embeddings and 3 x 1280-d duplicate descriptors, the job's real
dimensions, with each image's true content hash and listing), so that no CNN has to run
over 100,000 images to set the scene. Then two nights with nothing changed run the real
embed stage (Spark local[2]):

  (a) ``embed.reuse_by_listing: false``: every image read and hashed (what the stage did
      before listings: the bytes of the whole catalog every night);
  (b) ``embed.reuse_by_listing: true`` (the default): each image's listing (a stat) only.

Printed for each: the stage's time, the images it hashed and the bytes it read, and the
vectors it reused, then the ratio. Both nights write the same vectors again (the run's
embeddings folder), which is most of what is left in (b). Local files come from the page
cache here, so (a) is cheap on this machine; on object storage each hashed image is a GET
(a million 200 kB photos are 200 GB), which (b) replaces by a file-info request.

Usage:  .venv/bin/python benchmarks/unchanged_night.py [--images 100000]
        .venv/bin/python benchmarks/unchanged_night.py --smoke   (300 images: the code runs)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "lib"), str(REPO)]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))

DIM = 1280
NIGHTS = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i // 1000:03d}" / f"p{i:06d}.jpg"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True)
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def write_catalog(path: Path, images: list[Path]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        for i, image in enumerate(images):
            writer.writerow(
                [f"SKU-{i:06d}", f"category-{i % 10}", str(image), f"thing {i}", "true"]
            )


def write_first_night(ctx, images: list[Path], model_id: str, limits, seed: int = 1) -> None:
    """The first night's embeddings folder, as the embed stage writes it."""
    from lookalike.core.images import content_hash, image_version, read_bytes
    from lookalike.stages.embed import EMBEDDINGS_COLUMNS

    rng = np.random.default_rng(seed)
    n = len(images)
    folder = Path(str(ctx.layout.embeddings))
    folder.mkdir(parents=True)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    for start in range(0, n, 10_000):
        part = images[start : start + 10_000]
        m = len(part)

        def floats(width: int, m: int = m) -> pa.Array:
            values = rng.standard_normal(m * width, dtype=np.float32)
            return pa.FixedSizeListArray.from_arrays(values, width).cast(pa.list_(pa.float32()))

        table = pa.table(
            {
                "sku_id": [f"SKU-{i:06d}" for i in range(start, start + m)],
                "category": [f"category-{i % 10}" for i in range(start, start + m)],
                "is_active": np.ones(m, dtype=bool),
                "content_hash": [content_hash(read_bytes(str(p), limits)) for p in part],
                "image_uri": [str(p) for p in part],
                "image_version": [image_version(str(p), limits) for p in part],
                "model_id": [model_id] * m,
                "embedding": floats(DIM),
                "rmac": floats(3 * DIM),
                "phash": rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64),
                "phash_mirrored": rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64),
                "thumbnail": [bytes(rng.integers(0, 256, 1024, dtype=np.uint8))] * m,
                "embedded_at": pa.array([now] * m, pa.timestamp("us", tz="UTC")),
            }
        )
        assert tuple(table.column_names) == EMBEDDINGS_COLUMNS
        pq.write_table(table, folder / f"part-{start // 10_000:05d}.parquet")
    (folder / "_SUCCESS").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--smoke", action="store_true", help="300 images: the code runs")
    args = parser.parse_args()
    if args.smoke:
        args.images = 300

    from lookalike.config import Config
    from lookalike.core import backbones
    from lookalike.core.images import ImageLimits
    from lookalike.pipeline import RunContext, run_stage
    from lookalike.session import build_session

    workdir = Path(tempfile.mkdtemp(prefix="unchanged-night-"))
    try:
        started = time.perf_counter()
        images = make_images(workdir / "images", args.images)
        total_bytes = sum(p.stat().st_size for p in images)
        catalog = workdir / "catalog.csv"
        write_catalog(catalog, images)
        print(
            f"{args.images:,} images ({total_bytes / 1e6:,.1f} MB) made in "
            f"{time.perf_counter() - started:.1f} s"
        )
        config = Config().with_overrides(
            catalog={"path": str(catalog)},
            output={"root": str(workdir / "out")},
            model={"weights": "random", "allow_random_weights": True},
            spark={
                "master": "local[2]",
                "conf": {
                    "spark.sql.shuffle.partitions": "4",
                    "spark.ui.enabled": "false",
                    # The default 1 GB local driver: the session's Parquet batch and row-group
                    # defaults (lookalike.session) are what let it reuse 100k stored vectors.
                },
            },
        )
        spark = build_session(config)
        try:
            first = RunContext(config, NIGHTS[0])
            run_stage("ingest", spark, first)
            model_id = backbones.resolve_model(config.model).model_id
            limits = ImageLimits(
                config.embed.max_image_bytes, config.embed.max_image_pixels, (str(workdir),)
            )
            started = time.perf_counter()
            write_first_night(first, images, model_id, limits)
            print(
                f"first night's vectors ({DIM}-d) written in {time.perf_counter() - started:.1f} s"
            )
            figures = {}
            for night, by_listing in ((NIGHTS[1], False), (NIGHTS[2], True)):
                nightly = config.with_overrides(embed={"reuse_by_listing": by_listing})
                ctx = RunContext(nightly, night)
                run_stage("ingest", spark, ctx)
                started = time.perf_counter()
                counts = run_stage("embed", spark, ctx).counts
                seconds = time.perf_counter() - started
                figures[by_listing] = (seconds, counts)
                label = "(b) by listing " if by_listing else "(a) hash every image"
                print(
                    f"{label}: embed stage {seconds:.1f} s, hashed {counts['hashed']:,} images "
                    f"({counts['bytes_hashed'] / 1e6:,.1f} MB read), reused "
                    f"{counts['reused']:,} ({counts['reused_by_listing']:,} by listing, "
                    f"{counts['reused_by_content']:,} by content), embedded {counts['embedded']}"
                )
                assert counts["reused"] == args.images and counts["embedded"] == 0, counts
        finally:
            spark.stop()
        (a_s, a), (b_s, b) = figures[False], figures[True]
        print(
            f"unchanged night, listing against hashing: time x{b_s / a_s:.2f}, bytes read "
            f"{b['bytes_hashed']:,} against {a['bytes_hashed']:,}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
