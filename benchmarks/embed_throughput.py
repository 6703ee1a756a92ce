"""Embedding throughput: the Spark embed stage against a plain PyTorch loop, on real photos.

Measures, on N real photos of ../shared/datasets/clothing-small (default 1,000):

  (a) a plain single-process PyTorch loop doing the same read + decode + preprocess + model
      work with the same number of threads (the library's own functions, no Spark);
  (b) the Spark embed stage (``lookalike.pipeline.run_stage("embed")`` on local[threads]),
      from the stage's start to its Parquet output, worker start-up and model load included;
  (c) the same data through our Iterator pandas UDF and through Spark's own
      ``pyspark.ml.functions.predict_batch_udf`` wrapping the same embedding function
      (written to Spark's no-op sink, so only the UDFs differ);
  (d) an incremental run after 1% of the images changed, against the full run's time;
  (e) the peak resident memory of a Python worker while embedding.

Usage:  .venv/bin/python benchmarks/embed_throughput.py [--images 1000] [--threads 2]
        .venv/bin/python benchmarks/embed_throughput.py --smoke   (20 photos, every part:
            seconds of work, to show the benchmark still runs; the figures mean nothing)
Prints one figure per line; takes about 5 minutes on 2 cores.
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
DATASET = REPO.parent / "shared" / "datasets" / "clothing-small"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))


def photos(n: int) -> list[tuple[str, Path]]:
    """N photos (category, path), spread over the categories, in a fixed order."""
    by_category: dict[str, list[Path]] = {}
    for path in sorted(DATASET.glob("*/*/*.jpg")):
        by_category.setdefault(path.parent.name, []).append(path)
    chosen: list[tuple[str, Path]] = []
    while len(chosen) < n and any(by_category.values()):
        for category, paths in sorted(by_category.items()):
            if paths and len(chosen) < n:
                chosen.append((category, paths.pop(0)))
    if len(chosen) < n:
        sys.exit(f"only {len(chosen)} photos under {DATASET}, asked for {n}")
    return chosen


def write_catalog(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku_id", "category", "image_uri", "title", "is_active"])
        for sku, category, uri in rows:
            writer.writerow([sku, category, uri, f"{category} {sku}", "true"])


def plain_loop(paths: list[Path], settings, limits, threads: int) -> float:
    """(a): images/s of one process, one model, `threads` torch threads."""
    import torch

    from lookalike.core.backbones import load_embedder
    from lookalike.core.embedding import embed_uris

    torch.set_num_threads(threads)
    started = time.perf_counter()
    embedder = load_embedder(settings)
    result = embed_uris([str(p) for p in paths], embedder, limits)
    seconds = time.perf_counter() - started
    assert result["reject_reason"].isna().all(), "the benchmark photos must all embed"
    return len(paths) / seconds


def udf_comparison(spark, catalog_df, model, embed_settings, limits, n_partitions: int):
    """(c): seconds of our Iterator UDF and of predict_batch_udf, same function, same data."""
    import numpy as np
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from lookalike.core.embedding import embed_uris
    from lookalike.stages.embed import _worker_embedder, make_embed_udf

    def make_predict_fn():
        embedder = _worker_embedder(model)

        def predict(uris: np.ndarray) -> np.ndarray:
            # predict_batch_udf cannot return a struct with null fields (a rejected image has
            # no vector, a good one no reason), so only the vectors: every photo here is good.
            return np.stack(embed_uris(uris, embedder, limits)["embedding"].to_list())

        return predict

    ours = make_embed_udf(model, embed_settings, limits)
    spark_own = predict_batch_udf(
        make_predict_fn, return_type=ArrayType(FloatType()), batch_size=model.batch_size
    )
    data = catalog_df.repartition(n_partitions).cache()
    data.count()
    seconds = {}
    for name, udf in (("iterator pandas UDF", ours), ("predict_batch_udf", spark_own)):
        started = time.perf_counter()
        data.select(udf(F.col("image_uri")).alias("e")).write.format("noop").mode(
            "overwrite"
        ).save()
        seconds[name] = time.perf_counter() - started
    data.unpersist()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="cores for both (a) and (b)")
    parser.add_argument("--changed", type=float, default=0.01, help="share changed for (d)")
    parser.add_argument("--skip-udf-comparison", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="20 photos: seconds of work")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.changed = 20, 0.05
    if not DATASET.is_dir():
        sys.exit(f"{DATASET} is missing: this benchmark needs the shared clothing photos")

    from PIL import Image, ImageOps

    from lookalike.config import Config
    from lookalike.core.images import ImageLimits
    from lookalike.pipeline import RunContext, run_stage
    from lookalike.session import build_session

    chosen = photos(args.images)
    work = Path(tempfile.mkdtemp(prefix="lookalike-embed-bench-"))
    try:
        config = Config().with_overrides(
            spark={
                "master": f"local[{args.threads}]",
                "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8"},
            },
            catalog={"path": str(work / "catalog.csv"), "image_roots": [str(DATASET), str(work)]},
            output={"root": str(work / "out")},
        )
        model, embed_settings = config.model, config.embed
        limits = ImageLimits(embed_settings.max_image_bytes, embed_settings.max_image_pixels)
        print(f"photos: {len(chosen)} from {DATASET} (JPEG, about 400x534)")
        print(
            f"cores: {args.threads}; model {model.backbone} {model.weights}, "
            f"batch {model.batch_size}"
        )

        loop_rate = plain_loop([p for _, p in chosen], model, limits, args.threads)
        print(
            f"(a) plain PyTorch loop, 1 process x {args.threads} threads: {loop_rate:.1f} images/s"
        )

        rows = [(f"SKU-{i:06d}", c, str(p)) for i, (c, p) in enumerate(chosen)]
        write_catalog(work / "catalog.csv", rows)
        spark = build_session(config)
        day1 = RunContext(config, dt.date(2026, 1, 1))
        run_stage("ingest", spark, day1)
        full = run_stage("embed", spark, day1)
        stage_rate = full.counts["embedded"] / full.seconds
        print(
            f"(b) Spark embed stage, local[{args.threads}]: {stage_rate:.1f} images/s "
            f"({full.counts['embedded']} images in {full.seconds:.1f} s)"
        )
        print(f"    ratio (b)/(a): {stage_rate / loop_rate:.2f}  (target >= 0.9)")

        if not args.skip_udf_comparison:
            catalog_df = spark.read.parquet(str(day1.layout.catalog))
            n_partitions = args.threads * 4
            seconds = udf_comparison(spark, catalog_df, model, embed_settings, limits, n_partitions)
            for name, s in seconds.items():
                print(f"(c) {name}: {len(rows) / s:.1f} images/s ({s:.1f} s)")
            ratio = seconds["predict_batch_udf"] / seconds["iterator pandas UDF"]
            print(f"    predict_batch_udf time / iterator UDF time: {ratio:.2f}")

        # (d): 1% of the SKUs get a different photo (mirrored copies, new bytes).
        n_changed = max(1, round(len(rows) * args.changed))
        changed_dir = work / "changed"
        changed_dir.mkdir()
        for i in range(n_changed):
            sku, category, uri = rows[i * (len(rows) // n_changed)]
            target = changed_dir / f"{sku}.jpg"
            ImageOps.mirror(Image.open(uri)).save(target, quality=90)
            rows[i * (len(rows) // n_changed)] = (sku, category, str(target))
        write_catalog(work / "catalog.csv", rows)
        day2 = RunContext(config, dt.date(2026, 1, 2))
        run_stage("ingest", spark, day2)
        incremental = run_stage("embed", spark, day2)
        counts = incremental.counts
        print(
            f"(d) incremental run, {n_changed} of {len(rows)} images changed: "
            f"{incremental.seconds:.1f} s (reused {counts['reused']}, embedded "
            f"{counts['embedded']}, rejected {counts['rejected']}) vs full {full.seconds:.1f} s: "
            f"{100 * incremental.seconds / full.seconds:.1f}% of the full run (target <= 10%)"
        )
        print(
            f"(e) peak resident memory of a Python worker while embedding: "
            f"{full.counts['worker_peak_rss_mb']} MB"
        )
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
