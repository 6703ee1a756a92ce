"""The embed stage reading its photos over HTTP, against reading the same files from disk.

The demo's real photos (demo/sample/, --images of them, repeated under new names when more
are asked) are catalogued twice: once as files, once as ``http://127.0.0.1:<port>/...`` links
to a real HTTP server on loopback (tests/http_server.py: ETags, keep-alive, in a thread of this
process, so it shares the 2 cores with Spark). In one run:

  (a) the embed stage over the files (a first night: every image read and embedded);
  (b) the embed stage over HTTP (a first night: every image downloaded once and embedded);
  (c) the next, unchanged night over HTTP: conditional GETs only.

A warm-up pass over the files runs first (worker start-up and model load are paid there).
Printed: images/s of (a) and (b) and their ratio (target >= 0.9), and for (c) the stage's
time, the 304s, the downloads and the bytes downloaded (target: none).

Usage:  .venv/bin/python benchmarks/http_images.py [--images 250]
        .venv/bin/python benchmarks/http_images.py --smoke   (20 images, random weights)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "lib"), str(REPO)]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))

SAMPLE = REPO / "demo" / "sample"
NIGHTS = dt.date(2026, 11, 1), dt.date(2026, 11, 2)


def photos(folder: Path, n: int) -> list[Path]:
    """N photo files under ``folder``: the sample's, copied under new names past its 225."""
    with (SAMPLE / "manifest.csv").open(newline="") as handle:
        sample = [SAMPLE / row["file"] for row in csv.DictReader(handle)]
    chosen = []
    for i in range(n):
        target = folder / f"{i // 100:03d}" / f"p{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample[i % len(sample)], target)
        chosen.append(target)
    return chosen


def write_catalog(path: Path, uris: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        for i, uri in enumerate(uris):
            writer.writerow([f"SKU-{i:05d}", f"category-{i % 5}", uri, f"thing {i}", "true"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--smoke", action="store_true", help="20 images, random weights")
    args = parser.parse_args()
    if args.smoke:
        args.images = 20

    from lookalike.config import Config
    from lookalike.pipeline import RunContext, run_stage
    from lookalike.session import build_session
    from tests.http_server import image_server

    workdir = Path(tempfile.mkdtemp(prefix="http-images-"))
    try:
        files = photos(workdir / "photos", args.images)
        total = sum(p.stat().st_size for p in files)
        print(f"{len(files)} real photos ({total / 1e6:.1f} MB)")
        model = {"weights": "random", "allow_random_weights": True} if args.smoke else {}
        spark_conf = {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"}
        base = Config().with_overrides(
            model=model, spark={"master": "local[2]", "conf": spark_conf}
        )
        spark = build_session(base)
        try:
            with image_server(root=workdir / "photos") as server:
                prefix = server.url("/")
                sources = {
                    "disk": ([str(p) for p in files], [str(workdir / "photos")]),
                    "http": (
                        [prefix + str(p.relative_to(workdir / "photos")) for p in files],
                        [prefix],
                    ),
                }
                figures = {}
                # A warm-up pass over the files first: Python workers start, import torch and
                # build the model once, which neither measured pass should pay.
                sources = {"warm-up": sources["disk"], **sources}
                for name, (uris, roots) in sources.items():
                    folder = workdir / name
                    folder.mkdir()
                    write_catalog(folder / "catalog.csv", uris)
                    config = base.with_overrides(
                        catalog={"path": str(folder / "catalog.csv"), "image_roots": roots},
                        output={"root": str(folder / "out")},
                    )
                    nights = [NIGHTS[0], NIGHTS[1]] if name == "http" else [NIGHTS[0]]
                    for night in nights:
                        ctx = RunContext(config, night)
                        run_stage("ingest", spark, ctx)
                        server.clear_log()
                        started = time.perf_counter()
                        counts = run_stage("embed", spark, ctx).counts
                        figures[name, night] = (time.perf_counter() - started, counts)
                        figures[name, night, "requests"] = len(server.requests)
        finally:
            spark.stop()
        disk_s, disk = figures["disk", NIGHTS[0]]
        http_s, http = figures["http", NIGHTS[0]]
        again_s, again = figures["http", NIGHTS[1]]
        print(
            f"(a) disk: {disk['embedded']} images in {disk_s:.1f} s: "
            f"{disk['embedded'] / disk_s:.1f} images/s"
        )
        print(
            f"(b) http: {http['embedded']} images in {http_s:.1f} s: "
            f"{http['embedded'] / http_s:.1f} images/s ({http['http_downloads']} downloads, "
            f"{http['http_bytes'] / 1e6:.1f} MB); http/disk speed x{disk_s / http_s:.2f}"
            " (target >= 0.9)"
        )
        print(
            f"(c) unchanged http night: embed stage {again_s:.1f} s, "
            f"{again['http_not_modified']} answered 304 of "
            f"{figures['http', NIGHTS[1], 'requests']} requests, {again['http_downloads']} "
            f"downloads, {again['http_bytes']:,} bytes downloaded, {again['reused']} reused"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
